//! Volume administration end to end: dumps and restores (full and incremental, damaged ones
//! refused), backups sharing chunks, quotas failing the store that crosses them at `close`, and
//! renames, checked through real venus mounts.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use e2e::*;

type R = anyhow::Result<()>;

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path under `root` with the blake3 of its contents (or what it is).
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let rel = e.path().strip_prefix(root).expect("prefix").display().to_string();
            let m = fs::symlink_metadata(e.path()).expect("metadata");
            let what = if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(e.path()).expect("link").display())
            } else if m.is_dir() {
                stack.push(e.path());
                "dir".into()
            } else {
                blake3::hash(&fs::read(e.path()).expect("read")).to_hex().to_string()
            };
            out.insert(rel, what);
        }
    }
    out
}

/// Writes a file and reports what `close` says (Rust's `File` ignores close errors).
fn write_and_close(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    let fd = f.into_raw_fd();
    // SAFETY: fd is an open descriptor we own; it is closed exactly once here.
    if unsafe { libc::close(fd) } != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn store_chunk_files(vice: &Vice) -> usize {
    fn count(p: &Path) -> usize {
        fs::read_dir(p).map_or(0, |rd| rd.flatten().map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 }).sum())
    }
    count(&vice.data().join("store/chunks"))
}

#[test]
fn dumps_restore_equal_trees_full_and_incremental_and_damaged_dumps_restore_nothing() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("dump.test")?;
    let m = VenusMount::start(&vice, "dump.test")?;
    ok(vice.vos(&["create", "proj"]));
    m.venus_ok(&["mkmount", &m.path("proj").display().to_string(), "proj"]);
    let p = m.path("proj");
    fs::create_dir_all(p.join("src/deep"))?;
    for i in 0..20 {
        fs::write(p.join(format!("src/f{i}.c")), Noise::bytes(i, 1000 + i as usize * 700))?;
    }
    fs::write(p.join("src/deep/big.bin"), Noise::bytes(99, 3 << 20))?;
    fs::write(p.join("same-as-big"), Noise::bytes(99, 3 << 20))?;
    std::os::unix::fs::symlink("src/deep/big.bin", p.join("link"))?;

    let dir = tempfile::tempdir()?;
    let full = dir.path().join("proj.full");
    let out = ok(vice.vos(&["dump", "proj", "--file", &full.display().to_string()]));
    let since: String =
        out.lines().last().unwrap_or("").split_whitespace().nth(2).unwrap_or("").trim_end_matches(':').into();
    assert!(since.parse::<f64>().is_ok(), "{out}");
    assert!(fs::metadata(&full)?.len() < (4 << 20), "shared chunks travel once");

    // Changes after the full dump.
    fs::write(p.join("src/f3.c"), b"changed")?;
    fs::remove_file(p.join("src/f4.c"))?;
    fs::rename(p.join("src/f5.c"), p.join("src/deep/f5-moved.c"))?;
    fs::write(p.join("src/new.c"), b"new")?;
    let inc = dir.path().join("proj.inc");
    ok(vice.vos(&["dump", "proj", "--since", &since, "--file", &inc.display().to_string()]));
    assert!(fs::metadata(&inc)?.len() < fs::metadata(&full)?.len() / 10, "the incremental dump carries changes only");

    // A damaged or cut dump is refused whole, before anything is restored.
    let bytes = fs::read(&full)?;
    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    let bad = dir.path().join("bad");
    for damaged in [flipped, bytes[..bytes.len() * 2 / 3].to_vec()] {
        fs::write(&bad, damaged)?;
        let out = vice.vos(&["restore", &bad.display().to_string(), "copy"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a usable dump") && err.contains("not a valid dump"), "{err}");
    }
    // The server checks on its own too, whatever a client sends it.
    let damaged = fs::read(&bad)?;
    let refused = tokio::runtime::Runtime::new()?.block_on(async {
        let c = TestClient::admin(&vice).await?;
        let mut at = 0;
        let req = proto::Request::RestoreVolumeHere {
            id: proto::VolumeId(999),
            name: "copy".into(),
            overwrite: false,
            kind: proto::msg::VolumeKind::ReadWrite,
        };
        let r = c.session.upload(&req, |buf| {
            let n = buf.len().min(damaged.len() - at);
            buf[..n].copy_from_slice(&damaged[at..at + n]);
            at += n;
            Ok(n)
        });
        anyhow::Ok(r.await)
    })?;
    let err = refused.expect_err("the server must refuse a cut dump");
    assert!(err.to_string().contains("not a valid dump"), "{err}");
    assert!(!vice.vos(&["examine", "copy"]).status.success(), "nothing was restored");
    assert!(!ok(vice.vos(&["listvol", &vice.addr])).contains("copy"), "nothing was restored");

    // Full, then incremental: the copy equals the original, file by file.
    ok(vice.vos(&["restore", &full.display().to_string(), "copy"]));
    let again = vice.vos(&["restore", &full.display().to_string(), "copy"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--overwrite"),
        "a full restore over a volume needs --overwrite"
    );
    ok(vice.vos(&["restore", &inc.display().to_string(), "copy"]));
    m.venus_ok(&["mkmount", &m.path("copy").display().to_string(), "copy"]);
    assert_eq!(tree(&m.path("copy")), tree(&p));
    assert_eq!(fs::read(m.path("copy/src/f3.c"))?, b"changed");
    assert!(!m.path("copy/src/f4.c").exists());
    Ok(())
}

#[test]
fn a_backup_shares_chunks_keeps_the_old_contents_and_is_read_only() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("backup.test")?;
    let m = VenusMount::start(&vice, "backup.test")?;
    ok(vice.vos(&["create", "home"]));
    m.venus_ok(&["mkmount", &m.path("home").display().to_string(), "home"]);
    fs::write(m.path("home/thesis.tex"), Noise::bytes(1, 2 << 20))?;
    fs::write(m.path("home/notes"), b"version 1")?;
    // Under a write-back permit the writes may still be on their way: the count is taken once
    // the server has them, or their chunks would land between it and the backup.
    m.venus_ok(&["sync"]);
    let chunks = store_chunk_files(&vice);
    let out = ok(vice.vos(&["backup", "home"]));
    assert!(out.contains("home.backup"), "{out}");
    assert_eq!(store_chunk_files(&vice), chunks, "a backup adds no chunk files");
    m.venus_ok(&["mkmount", &m.path("home/OldFiles").display().to_string(), "home.backup"]);
    fs::write(m.path("home/notes"), b"version 2")?;
    assert_eq!(fs::read(m.path("home/OldFiles/notes"))?, b"version 1");
    assert_eq!(fs::read(m.path("home/OldFiles/thesis.tex"))?, Noise::bytes(1, 2 << 20));
    let err = fs::write(m.path("home/OldFiles/notes"), b"no").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // A new backup replaces the old one; clients see the new contents.
    ok(vice.vos(&["backup", "home"]));
    assert_eq!(fs::read(m.path("home/OldFiles/notes"))?, b"version 2");
    Ok(())
}

#[test]
fn the_store_that_crosses_the_quota_fails_at_close_and_leaves_nothing_partial() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("quota.test")?;
    let a = VenusMount::start(&vice, "quota.test")?;
    let b = VenusMount::start(&vice, "quota.test")?;
    ok(vice.vos(&["create", "small", "--quota", "1M"]));
    a.venus_ok(&["mkmount", &a.path("small").display().to_string(), "small"]);
    fs::write(a.path("small/fits"), vec![1u8; 600_000])?;
    let err = write_and_close(&a.path("small/too-big"), &[2u8; 600_000]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    // The other client sees the file made, with none of the data that did not fit.
    assert_eq!(fs::read(b.path("small/too-big"))?.len(), 0);
    assert_eq!(fs::read(b.path("small/fits"))?.len(), 600_000);
    let q = ok(vice.vos(&["listquota", "small"]));
    assert!(q.contains("1.0 MiB") || q.contains("1 MiB") || q.contains("1M"), "{q}");
    ok(vice.vos(&["setquota", "small", "10M"]));
    fs::write(a.path("small/too-big"), vec![2u8; 600_000])?;
    assert_eq!(fs::read(b.path("small/too-big"))?.len(), 600_000);
    let q: serde_json::Value = serde_json::from_str(&ok(vice.vos(&["listquota", "small", "--json"])))?;
    assert_eq!(q["used"], 1_200_000);

    ok(vice.vos(&["rename", "small", "bigger"]));
    assert!(ok(vice.vos(&["examine", "bigger"])).contains("bigger"));
    assert!(!vice.vos(&["examine", "small"]).status.success());
    Ok(())
}
