//! Cells of several servers: a server joins, volumes are made on it, and clients holding the
//! original one-server cell file find them through the location service.

use std::fs;

use e2e::*;

type R = anyhow::Result<()>;

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_joined_server_holds_volumes_clients_find_without_a_new_cell_file() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let db = Vice::start("multi.test")?;
    let second = Vice::join(&db)?;
    // The joined server's cell file lists both servers; vos works with it.
    let cell = second.cell_file();
    assert_eq!(cell.servers.len(), 2);
    assert_eq!(cell.servers[1].address, second.addr);
    let exported = ok(db.vos(&["cellfile"]));
    assert!(exported.contains(&second.addr) && exported.contains(&db.addr), "{exported}");
    ok(second.vos(&["create", "far", "--server", &second.addr]));
    ok(second.vos(&["create", "near"]));
    let vldb = ok(second.vos(&["listvldb", "--json"]));
    assert!(vldb.contains("\"far\""), "{vldb}");
    assert!(ok(second.vos(&["listvol", &second.addr])).contains("far"));
    assert!(!ok(second.vos(&["listvol", &db.addr])).contains("far"));
    // Volume commands go to the server holding it.
    ok(second.vos(&["setquota", "far", "5M"]));
    assert!(ok(second.vos(&["examine", "far"])).contains("5.0 MiB"));
    let dumped = second.dir.path().join("far.dump");
    ok(second.vos(&["dump", "far", "--file", &dumped.display().to_string()]));
    // Backups, restores, renames and removals happen on the server holding the volume.
    ok(second.vos(&["backup", "far"]));
    ok(second.vos(&["restore", &dumped.display().to_string(), "farcopy", "--server", &second.addr]));
    ok(second.vos(&["rename", "farcopy", "farcopy2"]));
    let listed = ok(second.vos(&["listvol", &second.addr]));
    assert!(listed.contains("far.backup") && listed.contains("farcopy2") && !listed.contains("farcopy "), "{listed}");
    ok(second.vos(&["remove", "farcopy2"]));
    assert!(!ok(second.vos(&["listvol", &second.addr])).contains("farcopy"));
    assert!(!ok(second.vos(&["listvldb"])).contains("farcopy"));

    // Clients mount with the database server's one-server cell file.
    let a = VenusMount::start(&db, "multi.test")?;
    let b = VenusMount::start(&db, "multi.test")?;
    a.venus_ok(&["mkmount", &a.path("far").display().to_string(), "far"]);
    a.venus_ok(&["mkmount", &a.path("near").display().to_string(), "near"]);
    fs::write(a.path("far/x"), b"on the second server")?;
    fs::write(a.path("near/y"), b"on the first")?;
    assert_eq!(fs::read(b.path("far/x"))?, b"on the second server");
    assert_eq!(fs::read(b.path("near/y"))?, b"on the first");
    // Callbacks work across: b's copy is replaced when a changes the file.
    fs::write(a.path("far/x"), b"changed")?;
    assert_eq!(fs::read(b.path("far/x"))?, b"changed");
    // Tokens made by the database server are honoured by the other (the write above needed
    // the admin's rights there), and a restarted venus still knows where the volume lives.
    let mut b = b;
    b.restart()?;
    assert_eq!(fs::read(b.path("far/x"))?, b"changed");
    // The second server holds the data: stop it and the volume is unreachable (cached copies
    // still read).
    let mut second = second;
    second.stop()?;
    assert_eq!(fs::read(b.path("far/x"))?, b"changed");
    assert_eq!(fs::read(b.path("near/y"))?, b"on the first");
    Ok(())
}

/// The size of the file in the moved volume (the 200 MiB).
const MOVED: usize = 200 << 20;

#[test]
fn a_volume_moves_while_a_client_keeps_writing_and_a_failed_move_changes_nothing() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let db = Vice::start("move.test")?;
    let second = Vice::join(&db)?;
    ok(second.vos(&["create", "mv"]));
    let a = VenusMount::start(&db, "move.test")?;
    let b = VenusMount::start(&db, "move.test")?;
    a.venus_ok(&["mkmount", &a.path("mv").display().to_string(), "mv"]);
    fs::write(a.path("mv/big"), Noise::bytes(5, MOVED))?;

    // A client writes and reads in a loop all through the move.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dir = a.path("mv");
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || -> anyhow::Result<usize> {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let p = dir.join(format!("w{n}"));
                fs::write(&p, format!("write {n}"))?;
                anyhow::ensure!(fs::read(&p)? == format!("write {n}").as_bytes(), "read back {n}");
                n += 1;
            }
            Ok(n)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = ok(second.vos(&["move", "mv", &second.addr]));
    assert!(out.contains("Moved mv"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().expect("writer thread")?;
    assert!(written > 0);
    // Every write is there, seen by another client; the volume is on the new server only.
    for n in 0..written {
        assert_eq!(fs::read(b.path(&format!("mv/w{n}")))?, format!("write {n}").as_bytes(), "w{n}");
    }
    assert_eq!(blake3::hash(&fs::read(b.path("mv/big"))?), blake3::hash(&Noise::bytes(5, MOVED)));
    assert!(ok(second.vos(&["listvol", &second.addr])).contains("mv"));
    assert!(!ok(second.vos(&["listvol", &db.addr])).contains("mv"));

    // A move whose target dies midway fails, and the volume stays whole and usable where it
    // is. (vos notices a dead peer by its QUIC idle timeout.)
    let mut third = Vice::join(&db)?;
    let cell_with_third = third.cell_file_path();
    let moving = std::process::Command::new(bin("vos"))
        .args(["move", "mv", &third.addr])
        .env("AFS_CELL_FILE", &cell_with_third)
        .env("AFS_ADMIN_CRED", second.admin_cred_path())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(400));
    third.kill9();
    let out = moving.wait_with_output()?;
    assert!(!out.status.success(), "the move must fail when its target dies");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stays on"), "{}", String::from_utf8_lossy(&out.stderr));
    fs::write(b.path("mv/after"), b"still here")?;
    assert_eq!(fs::read(a.path("mv/after"))?, b"still here");
    assert!(ok(second.vos(&["listvol", &second.addr])).contains("mv"));
    assert_eq!(blake3::hash(&fs::read(a.path("mv/big"))?), blake3::hash(&Noise::bytes(5, MOVED)));
    Ok(())
}

/// The contents the replica test writes: file `i` of `sw`.
fn sw_file(i: usize) -> Vec<u8> {
    format!("software file {i}\n").repeat(50 + i).into_bytes()
}

#[test]
fn released_replicas_serve_read_only_paths_and_survive_a_server_failure() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let db = Vice::start("ro.test")?;
    let second = Vice::join(&db)?;
    let third = Vice::join(&db)?;
    // `third`'s cell file lists all three servers; vos uses it.
    ok(third.vos(&["create", "sw"]));
    let writer = VenusMount::start_with(&db, "ro.test", &["--timeout", "2"])?;
    writer.venus_ok(&["mkmount", &writer.path("sw").display().to_string(), "sw"]);
    fs::create_dir(writer.path("sw/lib"))?;
    for i in 0..30 {
        fs::write(writer.path(&format!("sw/lib/f{i}")), sw_file(i))?;
    }

    // Replicas of the cell's root and of sw on the two other servers, released.
    for volume in ["root.cell", "sw"] {
        ok(third.vos(&["addsite", volume, &second.addr]));
        ok(third.vos(&["addsite", volume, &third.addr]));
        let examined = ok(third.vos(&["examine", volume]));
        assert!(examined.contains("RO (not released)"), "{examined}");
        let out = ok(third.vos(&["release", volume]));
        assert!(out.contains("to 2 of 2 read-only sites"), "{out}");
    }
    let examined = ok(third.vos(&["examine", "sw.readonly"]));
    assert!(examined.contains("sw.readonly") && examined.contains("ReadOnly"), "{examined}");
    assert!(ok(third.vos(&["listvol", &second.addr])).contains("sw.readonly"));

    // A client mounting now reaches the cell through its read-only root, so the mount point
    // leads to sw's replica: the same files, and no writes.
    let reader = VenusMount::start_with(&db, "ro.test", &["--timeout", "2"])?;
    for i in 0..10 {
        assert_eq!(fs::read(reader.path(&format!("sw/lib/f{i}")))?, sw_file(i), "f{i}");
    }
    let refused = fs::write(reader.path("sw/lib/new"), b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");
    // The read-write path is `.<cell>`: a change there reaches the replicas at the next release.
    let rw = reader.mountpoint.join(".ro.test");
    fs::write(rw.join("sw/lib/new"), b"released later")?;
    assert_eq!(fs::read(rw.join("sw/lib/new"))?, b"released later");
    let listed = |dir: &std::path::Path| -> anyhow::Result<Vec<String>> {
        Ok(fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?)
    };
    assert!(!listed(&reader.path("sw/lib"))?.contains(&"new".to_string()));
    ok(third.vos(&["release", "sw"]));
    assert_eq!(fs::read(reader.path("sw/lib/new"))?, b"released later");
    // A read-write mount point leads to the read-write volume even through a replica.
    let swrw = writer.mountpoint.join(".ro.test/swrw");
    writer.venus_ok(&["mkmount", "--rw", &swrw.display().to_string(), "sw"]);
    ok(third.vos(&["release", "root.cell"]));
    fs::write(reader.path("swrw/lib/via-rw"), b"writable")?;
    assert_eq!(fs::read(rw.join("sw/lib/via-rw"))?, b"writable");

    // The first replica's server dies. Reads through the read-only path go on from the other
    // one: cached files and files never read before alike, and a client mounting afresh.
    let mut second = second;
    second.kill9();
    for i in 0..30 {
        assert_eq!(fs::read(reader.path(&format!("sw/lib/f{i}")))?, sw_file(i), "f{i} after the kill");
    }
    let late = VenusMount::start_with(&db, "ro.test", &["--timeout", "2"])?;
    for i in (0..30).step_by(3) {
        assert_eq!(fs::read(late.path(&format!("sw/lib/f{i}")))?, sw_file(i), "f{i} on a new client");
    }
    assert!(reader.log_text().contains("trying another") || late.log_text().contains("trying another"));
    // The read-write volume (on the database server) is untouched by all this.
    let rw = writer.mountpoint.join(".ro.test/sw/lib/after");
    fs::write(&rw, b"still writable")?;
    assert_eq!(fs::read(&rw)?, b"still writable");
    Ok(())
}
