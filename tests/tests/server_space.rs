//! A full server disk must never stop clients: a real vice whose data directory is a real
//! 96 MiB tmpfs is filled with 10 MiB stores until it answers `NoSpace` (the upload refused by
//! its declared size, the stream stopped, the reason still sent); then another process fills
//! the disk to its last byte, and removals still commit (vice gives up its reserve file for
//! them); once that process's file is gone, the next store goes through at once.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use e2e::*;
use proto::msg::Call;
use proto::*;

const MIB: usize = 1 << 20;
const FILE: usize = 10 * MIB;

/// `PutChunks` by hand, as a client that reads the server's reply even when the server stopped
/// its stream: whether the writes were stopped, and the reply.
async fn put_chunks(c: &TestClient, volume: VolumeId, chunks: Vec<(ChunkRef, &[u8])>) -> Result<(bool, Response)> {
    let (mut send, mut recv) = c.session.connection().open_bi().await?;
    let request = Request::PutChunks { volume, chunks: chunks.iter().map(|(r, _)| *r).collect() };
    proto::frame::write_frame(&mut send, &Call { token: c.token.clone(), request }).await?;
    let mut stopped = false;
    for (_, bytes) in &chunks {
        if send.write_all(bytes).await.is_err() {
            stopped = true;
            break;
        }
    }
    let _ = send.finish();
    Ok((stopped, proto::frame::read_frame(&mut recv).await?))
}

/// Creates `name` and stores `data` in it: its new attributes, or the server's refusal and
/// the request that heard it.
async fn store_file(
    c: &TestClient,
    root: Fid,
    name: &str,
    data: &[u8],
) -> Result<Result<Attr, (&'static str, RemoteError)>> {
    let f = match c.create(root, name).await {
        Ok(f) => f,
        Err(e) => return remote(e).map(|e| Err(("Create", e))),
    };
    let pieces = proto::chunk::chunk_bytes(data);
    let refs: Vec<ChunkRef> = pieces.iter().map(|(r, _)| *r).collect();
    let missing =
        c.session.missing_chunks(c.token.as_ref(), root.volume, refs.iter().map(|r| r.hash).collect()).await?;
    let to_send: Vec<(ChunkRef, &[u8])> = missing.iter().map(|&i| pieces[i as usize]).collect();
    if !to_send.is_empty() {
        match put_chunks(c, root.volume, to_send).await? {
            (_, Response::ChunksStored { .. }) => {}
            (stopped, Response::Error(e)) => {
                assert!(stopped, "a refused upload's stream is stopped, not read to its end");
                return Ok(Err(("PutChunks", e)));
            }
            (_, other) => bail!("unexpected reply to PutChunks: {other:?}"),
        }
    }
    match c.mutate(c.store_record(&f, refs)).await {
        Ok(applied) => Ok(Ok(applied.attrs.into_iter().find(|a| a.fid == f.fid).context("no attrs")?)),
        Err(e) => remote(e).map(|e| Err(("Store", e))),
    }
}

/// The server's refusal inside an error, or the error itself if it is something else.
fn remote(e: anyhow::Error) -> Result<RemoteError> {
    match e.downcast_ref::<ProtoError>().and_then(|p| p.remote()) {
        Some(r) => Ok(r.clone()),
        None => Err(e),
    }
}

async fn remove(c: &TestClient, root: Fid, name: &str, f: &Attr) -> Result<Applied> {
    c.mutate(Record {
        op: OpId::random(),
        mutation: Mutation::Remove {
            parent: root,
            name: Name::new(name)?,
            seen: Seen { object: f.fid.object, base: Base::Version(f.version.clone()) },
        },
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_disk_refuses_stores_with_no_space_and_removals_still_free_it() -> Result<()> {
    // Declared first, dropped last: vice is killed before its disk goes.
    let disk = TmpFs::new(96 << 20)?;
    let vice = Vice::start_in("space.test", disk.path())?;
    let reserve = vice.data().join("store").join("reserve");
    let held = |path: &Path| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512);
    assert!(held(&reserve)? >= 32 << 20, "vice keeps a reserve file of real blocks at {}", reserve.display());
    let c = TestClient::connect_as(&vice.cell_file(), vice.admin_identity()).await?;
    let root = c.root_of("root.cell").await?;

    let body = async {
        let mut stored = Vec::new();
        let refusal = loop {
            let name = format!("big{}", stored.len());
            // Distinct contents (Noise makes a seed odd): nothing is shared between files.
            let data = Noise::bytes(2 * stored.len() as u64 + 1, FILE);
            match store_file(&c, root, &name, &data).await? {
                Ok(attr) => stored.push((name, attr)),
                Err(e) => break e,
            }
            assert!(stored.len() < 10, "a 96 MiB disk took more than 90 MiB of stores");
        };
        // Refused by its declared size before a byte of it was written, with the reason sent.
        assert_eq!(refusal, ("PutChunks", RemoteError::NoSpace), "a store refused for space says so");
        assert!(stored.len() >= 3, "only {} files fit before the disk was full", stored.len());
        let free = disk.free_bytes()?;
        assert!(free < 26 << 20, "refused with {free} bytes free: more than the low-water mark and a file");

        // Another process takes the rest, to the last byte: removals must still commit.
        let ballast = disk.fill(0)?;
        for (name, attr) in stored.drain(..2) {
            remove(&c, root, &name, &attr).await.with_context(|| format!("removing {name} on a full disk"))?;
        }
        eprintln!("reserve file after the removals: {:?} bytes held", held(&reserve).ok());
        std::fs::remove_file(ballast)?;
        // And their space serves the next store at once.
        let again = store_file(&c, root, "after-removals", &Noise::bytes(1001, FILE)).await?;
        let again = again.map_err(|e| anyhow::anyhow!("the store after the removals was refused: {e:?}"))?;
        assert_eq!(again.size, FILE as u64);
        let (_, contents) = c.fetch(stored[0].1.fid).await?;
        assert_eq!(contents.len(), FILE, "what was stored before the disk filled is intact");
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(180), body).await.context("the test took over 3 minutes")??;
    Ok(())
}
