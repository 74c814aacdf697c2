//! End-to-end tests of the servers: real `vice serve` processes on 127.0.0.1, clients built from
//! `proto`, the `vos` binary.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use e2e::*;
use proto::chunk::chunk_stream;
use proto::msg::VolumeRef;
use proto::*;

type R = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_breaks_other_clients_callbacks_before_it_returns() -> R {
    let vice = Vice::start("callbacks.test")?;
    let a = TestClient::admin(&vice).await?;
    let b = TestClient::admin(&vice).await?;
    let root = a.root_of("root.cell").await?;
    let f = a.create(root, "shared.txt").await?;
    let f = a.store(&f, b"version one").await?;

    // B caches the file and the directory: it now holds promises on both.
    let (_, contents) = b.fetch(f.fid).await?;
    assert_eq!(contents, b"version one");
    b.session.call_ok(&Request::FetchDir { fid: root }).await?;

    a.store(&f, b"version two").await?;
    // The server waited for B's ack before answering A.
    assert!(b.broken(f.fid), "B's promise on the file was broken before A's store returned");
    assert!(!a.broken(f.fid), "the writer's own promise is not broken");
    assert_eq!(b.fetch(f.fid).await?.1, b"version two");

    a.create(root, "new.txt").await?;
    assert!(b.broken(root), "a new name in the directory broke B's promise on it");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_be_told_loses_its_promises_and_hears_so() -> R {
    let vice = Vice::start("lost.test")?;
    let cell = vice.cell_file();
    let a = TestClient::admin(&vice).await?;
    let root = a.root_of("root.cell").await?;
    let f = a.create(root, "f").await?;
    let f = a.store(&f, b"one").await?;

    let id = ClientId::random();
    let c = TestClient::connect_with(&cell, vice.admin_identity(), id).await?;
    c.fetch(f.fid).await?;
    c.session.close();
    drop(c);
    // C is gone: the break cannot be delivered, so the server declares it lost.
    a.store(&f, b"two").await?;

    let c = TestClient::connect_with(&cell, vice.admin_identity(), id).await?;
    let err = c.status(f.fid).await.unwrap_err();
    assert_eq!(err.downcast_ref::<ProtoError>().and_then(|e| e.remote()), Some(&RemoteError::CallbacksLost));
    // Told once; then it revalidates and carries on.
    assert_eq!(c.fetch(f.fid).await?.1, b"two");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_store_with_the_same_op_id_is_applied_once() -> R {
    let vice = Vice::start("retry.test")?;
    let c = TestClient::admin(&vice).await?;
    let root = c.root_of("root.cell").await?;
    let f = c.create(root, "f").await?;
    let (chunks, _) = c.upload(f.fid.volume, b"only once").await?;
    let record = c.store_record(&f, chunks);
    let first = c.mutate(record.clone()).await?;
    // The reply was "lost"; the client sends the very same record again.
    let second = c.mutate(record).await?;
    assert_eq!(first, second, "the retry is answered from the server's memory");
    let now = c.status(f.fid).await?;
    assert_eq!(now.version.compare(&f.version), VvOrder::Dominates);
    assert_eq!(now.version.total(), f.version.total() + 1, "applied exactly once");
    let vol = c.session.call_ok(&Request::ValidateVolumes { volumes: vec![(f.fid.volume, first.stamp)] }).await?;
    match vol {
        Response::Validated { volumes } => {
            assert!(volumes[0].valid, "the volume stamp did not move again")
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_content_stored_twice_sends_and_keeps_its_chunks_once() -> R {
    let vice = Vice::start("dedupe.test")?;
    let c = TestClient::admin(&vice).await?;
    let root = c.root_of("root.cell").await?;
    let content = Noise::bytes(5, 3 * 1024 * 1024);
    let a = c.create(root, "a").await?;
    let b = c.create(root, "b").await?;
    let (chunks, stored_first) = c.upload(a.fid.volume, &content).await?;
    assert_eq!(stored_first as usize, chunks.len());
    c.mutate(c.store_record(&a, chunks)).await?;
    let (chunks, stored_second) = c.upload(b.fid.volume, &content).await?;
    assert_eq!(stored_second, 0, "the server already had every chunk");
    c.mutate(c.store_record(&b, chunks)).await?;
    assert_eq!(c.fetch(b.fid).await?.1, content);
    let vol = vice.vos(&["examine", "root.cell", "--json"]);
    assert!(vol.status.success(), "{}", String::from_utf8_lossy(&vol.stderr));
    let json: serde_json::Value = serde_json::from_slice(&vol.stdout)?;
    assert_eq!(json["volume"]["used"].as_u64(), Some(2 * content.len() as u64), "logical use counts both files");
    let chunk_bytes: u64 = std::fs::read_dir(vice.data().join("store/chunks"))?
        .filter_map(|d| d.ok())
        .filter(|d| d.file_name() != "tmp")
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().filter_map(|f| f.ok()))
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    // Small chunks (here the file's tail) are kept in the server's database, not in files.
    let db = rusqlite::Connection::open_with_flags(
        vice.data().join("store/volumes.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let inline_bytes: i64 = db.query_row("SELECT COALESCE(SUM(length(data)), 0) FROM chunks", [], |r| r.get(0))?;
    assert_eq!(chunk_bytes + inline_bytes as u64, content.len() as u64, "physical use counts the content once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_file_round_trips_with_equal_blake3() -> R {
    const SIZE: u64 = 1 << 30;
    let vice = Vice::start("big.test")?;
    let c = TestClient::admin(&vice).await?;
    let root = c.root_of("root.cell").await?;
    let f = c.create(root, "big").await?;

    // Write the source file in 1 MiB blocks, hashing as we go: nothing holds it whole.
    let src_path = vice.dir.path().join("big.src");
    let mut src = std::fs::File::create(&src_path)?;
    let mut hasher = blake3::Hasher::new();
    let mut noise = Noise::new(1);
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..(SIZE >> 20) {
        noise.fill(&mut block);
        hasher.update(&block);
        src.write_all(&block)?;
    }
    drop(src);
    let expected = hasher.finalize();

    // Chunk it (streaming), upload what is missing in batches, then commit the chunk list.
    let mut refs = Vec::new();
    let mut offsets = Vec::new();
    let mut at = 0u64;
    chunk_stream::<_, std::io::Error>(std::io::BufReader::new(std::fs::File::open(&src_path)?), |r, _| {
        refs.push(r);
        offsets.push(at);
        at += u64::from(r.len);
        Ok(())
    })?;
    assert_eq!(at, SIZE);
    let file = Arc::new(std::fs::File::open(&src_path)?);
    let missing = c.session.missing_chunks(None, f.fid.volume, refs.iter().map(|r| r.hash).collect()).await?;
    for batch in missing.chunks(256) {
        let chunks: Vec<ChunkRef> = batch.iter().map(|&i| refs[i as usize]).collect();
        let offs: Vec<u64> = batch.iter().map(|&i| offsets[i as usize]).collect();
        let lens: Vec<u32> = chunks.iter().map(|r| r.len).collect();
        let file = file.clone();
        c.session
            .put_chunks(None, f.fid.volume, chunks, move |i| {
                let mut buf = vec![0u8; lens[i] as usize];
                file.read_exact_at(&mut buf, offs[i])?;
                Ok(buf)
            })
            .await?;
    }
    c.mutate(c.store_record(&f, refs)).await?;

    // A second client fetches it, hashing the stream.
    let other = TestClient::admin(&vice).await?;
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let attr = other
        .session
        .fetch_data(None, f.fid, |_, bytes| {
            hasher.update(bytes);
            len += bytes.len() as u64;
            Ok(())
        })
        .await?
        .attr;
    assert_eq!(attr.size, SIZE);
    assert_eq!(len, SIZE);
    assert_eq!(hasher.finalize(), expected);
    Ok(())
}

fn version_content(file: usize, version: u64) -> Vec<u8> {
    let len = 50_000 + ((file as u64 * 7919 + version * 104_729) % 250_000) as usize;
    Noise::bytes(file as u64 * 1_000_003 + version, len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_of_stores_leaves_acknowledged_versions() -> R {
    const FILES: usize = 4;
    let mut vice = Vice::start("crash.test")?;
    let c = TestClient::admin(&vice).await?;
    let root = c.root_of("root.cell").await?;
    let mut attrs = Vec::new();
    for i in 0..FILES {
        attrs.push(c.create(root, &format!("f{i}")).await?);
    }
    let fids: Vec<Fid> = attrs.iter().map(|a| a.fid).collect();

    // Acknowledged version per file, updated only after the server answered.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..FILES).map(|_| AtomicU64::new(0)).collect());
    let total = Arc::new(AtomicU64::new(0));
    let writer = {
        let acked = acked.clone();
        let total = total.clone();
        tokio::spawn(async move {
            let mut version = 0u64;
            loop {
                version += 1;
                for (i, attr) in attrs.iter_mut().enumerate() {
                    match c.store(attr, &version_content(i, version)).await {
                        Ok(new) => {
                            *attr = new;
                            acked[i].store(version, Ordering::SeqCst);
                            total.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => return,
                    }
                }
            }
        })
    };
    while total.load(Ordering::SeqCst) < 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    vice.kill9();
    // The store in flight would only time out; what was acknowledged is already recorded.
    writer.abort();
    let _ = writer.await;
    let acked: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();

    vice.restart()?;
    let c = TestClient::admin(&vice).await?;
    for (i, fid) in fids.iter().enumerate() {
        let (_, data) = c.fetch(*fid).await?;
        let ok = data == version_content(i, acked[i]) || data == version_content(i, acked[i] + 1);
        assert!(ok, "file {i}: contents are neither acknowledged version {} nor the one in flight", acked[i]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_fingerprint_in_the_cell_file_fails_with_a_clear_error() -> R {
    let vice = Vice::start("pin.test")?;
    let mut cell = vice.cell_file();
    cell.servers[0].fingerprint = format!("b3:{}", "0".repeat(64));
    let err = TestClient::connect(&cell).await.err().expect("connection must fail");
    let msg = format!("{err:#}");
    assert!(matches!(err.downcast_ref::<ProtoError>(), Some(ProtoError::FingerprintMismatch { .. })), "{msg}");
    assert!(msg.contains("pins") && msg.contains(&vice.cell_file().servers[0].fingerprint), "{msg}");

    // vos says the same, and exits non-zero.
    let bad = vice.dir.path().join("bad-cell.toml");
    std::fs::write(&bad, cell.to_toml())?;
    let out = std::process::Command::new(bin("vos"))
        .args(["listvldb"])
        .env("AFS_CELL_FILE", &bad)
        .env("AFS_ADMIN_CRED", vice.admin_cred_path())
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong server or wrong cell file"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_and_the_server_keeps_serving() -> R {
    let vice = Vice::start("fuzz.test")?;
    let c = TestClient::admin(&vice).await?;
    let root = c.root_of("root.cell").await?;
    let conn = c.session.connection().clone();

    let send_raw = |bytes: Vec<u8>| {
        let conn = conn.clone();
        async move {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&bytes).await?;
            let _ = send.finish();
            let mut reply = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut recv, &mut reply).await?;
            anyhow::Ok(reply)
        }
    };
    let reply_error = |reply: Vec<u8>| -> RemoteError {
        match proto::frame::decode::<Response>(&reply[4..]) {
            Ok(Response::Error(e)) => e,
            other => panic!("expected an error reply, got {other:?}"),
        }
    };
    // An oversized length: refused before any allocation.
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"xxxx");
    assert!(matches!(reply_error(send_raw(huge).await?), RemoteError::Protocol(m) if m.contains("exceeds")));
    // Garbage of a plausible length.
    let mut garbage = 8u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xfe; 8]);
    assert!(matches!(reply_error(send_raw(garbage).await?), RemoteError::Protocol(_)));
    // A frame cut short.
    let mut cut = 100u32.to_le_bytes().to_vec();
    cut.extend_from_slice(&[1; 10]);
    assert!(matches!(reply_error(send_raw(cut).await?), RemoteError::Protocol(_)));
    // A bad name inside a well-formed message.
    let mut bad_name = postcard::to_stdvec(&Request::ListServers)?;
    bad_name.clear();
    let good = Request::Mutate {
        record: Record {
            op: OpId::random(),
            mutation: Mutation::Create {
                parent: root,
                name: Name::new("placeholder")?,
                object: ObjectId::random(),
                mode: 0o644,
                owner: 0,
                group: 0,
                mtime: Timestamp::now(),
            },
        },
    };
    let encoded = postcard::to_stdvec(&proto::msg::Call { token: None, request: good })?;
    let needle = b"placeholder";
    let pos = encoded.windows(needle.len()).position(|w| w == needle).expect("name in encoding");
    let mut evil = encoded.clone();
    evil[pos..pos + 3].copy_from_slice(b"a/b");
    bad_name.extend_from_slice(&(evil.len() as u32).to_le_bytes());
    bad_name.extend_from_slice(&evil);
    let e = reply_error(send_raw(bad_name).await?);
    assert!(matches!(&e, RemoteError::Protocol(m) if m.contains("invalid name") && m.contains("'/'")), "{e:?}");
    // A chunk upload whose bytes do not match their hash.
    let err = c
        .session
        .put_chunks(None, root.volume, vec![ChunkRef { hash: ChunkHash::of(b"right"), len: 5 }], |_| {
            Ok(b"wrong".to_vec())
        })
        .await
        .unwrap_err();
    assert!(matches!(err.remote(), Some(RemoteError::Invalid(_))), "{err}");
    // A chunk larger than the limit is refused from its header (sent raw: the client library
    // would not send a chunk shorter than it declares).
    let huge_chunk =
        Request::PutChunks { volume: root.volume, chunks: vec![ChunkRef { hash: ChunkHash::of(b""), len: u32::MAX }] };
    let encoded = postcard::to_stdvec(&proto::msg::Call { token: None, request: huge_chunk })?;
    let mut framed = (encoded.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&encoded);
    let e = reply_error(send_raw(framed).await?);
    assert!(matches!(e, RemoteError::Invalid(_)), "{e:?}");
    // And the library refuses, locally, to send a chunk shorter than it declares.
    let err = c
        .session
        .put_chunks(None, root.volume, vec![ChunkRef { hash: ChunkHash::of(b"right"), len: 5 }], |_| Ok(vec![]))
        .await
        .unwrap_err();
    assert!(err.remote().is_none() && err.to_string().contains("declared"), "{err}");

    // The same connection and a fresh client are both still served.
    c.status(root).await?;
    let other = TestClient::admin(&vice).await?;
    other.create(root, "still-works").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vos_manages_volumes_and_requires_the_admin_credential() -> R {
    let vice = Vice::start("vos.test")?;
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "vos failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(ok(vice.vos(&["create", "proj", "--quota", "10M"])).contains("Volume proj created"));
    let listed = ok(vice.vos(&["listvldb"]));
    for v in ["proj", "root.afs", "root.cell"] {
        assert!(listed.contains(v), "{listed}");
    }
    let examined: serde_json::Value = serde_json::from_str(&ok(vice.vos(&["examine", "proj", "--json"])))?;
    assert_eq!(examined["volume"]["quota"].as_u64(), Some(10 << 20));
    let on_server: serde_json::Value = serde_json::from_str(&ok(vice.vos(&["listvol", "1", "--json"])))?;
    assert_eq!(on_server.as_array().map(|a| a.len()), Some(3));
    let dup = vice.vos(&["create", "proj"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("creating volume proj"));

    // A client can find the new volume through the location service.
    let c = TestClient::admin(&vice).await?;
    let proj = c.root_of("proj").await?;
    c.create(proj, "in-proj").await?;

    // Another key is not the admin: every volume operation is refused.
    let stranger = vice.dir.path().join("stranger.cred");
    std::fs::write(&stranger, proto::tls::Identity::generate("stranger")?.to_pem())?;
    for args in
        [vec!["create", "x"], vec!["remove", "proj"], vec!["listvldb"], vec!["examine", "proj"], vec!["listvol", "1"]]
    {
        let out = std::process::Command::new(bin("vos"))
            .args(&args)
            .env("AFS_CELL_FILE", vice.cell_file_path())
            .env("AFS_ADMIN_CRED", &stranger)
            .output()?;
        assert!(!out.status.success(), "{args:?} succeeded without the admin credential");
        assert!(String::from_utf8_lossy(&out.stderr).contains("admin credential"), "{args:?}");
    }
    let out = std::process::Command::new(bin("vos"))
        .args(["listvldb"])
        .env("AFS_CELL_FILE", vice.cell_file_path())
        .env_remove("AFS_ADMIN_CRED")
        .output()?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin credential"));

    ok(vice.vos(&["remove", "proj"]));
    let gone = c.session.call(&Request::GetVolumeLocation { volume: VolumeRef::Name("proj".into()) }).await?;
    assert_eq!(gone, Response::Error(RemoteError::NoSuchVolume));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_vice_cleanly_and_data_survives_restart() -> R {
    let mut vice = Vice::start("restart.test")?;
    let c = TestClient::admin(&vice).await?;
    let root = c.root_of("root.cell").await?;
    let f = c.create(root, "keep").await?;
    c.store(&f, b"kept across restarts").await?;
    assert!(vice.stop()?, "vice exits 0 on SIGTERM:\n{}", vice.log_text());
    vice.restart()?;
    let c = TestClient::admin(&vice).await?;
    assert_eq!(c.fetch(f.fid).await?.1, b"kept across restarts");
    let mut log = String::new();
    std::fs::File::open(vice.dir.path().join("vice.log"))?.read_to_string(&mut log)?;
    assert!(log.contains("shutting down"));
    Ok(())
}
