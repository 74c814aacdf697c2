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
    fs::write(a.path("mv/big"), Noise::bytes(5, 48 << 20))?;

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
    assert_eq!(blake3::hash(&fs::read(b.path("mv/big"))?), blake3::hash(&Noise::bytes(5, 48 << 20)));
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
    assert_eq!(blake3::hash(&fs::read(a.path("mv/big"))?), blake3::hash(&Noise::bytes(5, 48 << 20)));
    Ok(())
}
