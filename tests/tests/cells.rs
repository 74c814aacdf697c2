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
