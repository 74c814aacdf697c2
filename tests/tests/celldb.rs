//! The cell database on a real 3-member etcd cluster on 127.0.0.1: every server answers
//! logins and lookups, so losing one (or one etcd member) stops nothing; admin operations
//! hold a volume's lock with a fencing token, and whatever a killed `vos` left half done is
//! finished or rolled back by the next one.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::etcd::EtcdCluster;
use e2e::*;
use proto::msg::{Fence, VolumeRef};

type R = anyhow::Result<()>;

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: std::process::Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `vice`'s cell file with only the server at `addr`: a client that talks to that one.
fn only(vice: &Vice, addr: &str) -> proto::cell::CellFile {
    let mut cell = vice.cell_file();
    cell.servers.retain(|s| s.address == addr);
    cell
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn losing_the_first_server_or_an_etcd_member_stops_no_login_lookup_or_file_access() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let mut etcd = EtcdCluster::start(3)?;
    let mut first = Vice::start_on_cell_db("etcd.test", &etcd.url())?;
    let second = Vice::join_cell_db(&first, &etcd.url())?;
    let third = Vice::join_cell_db(&first, &etcd.url())?;
    let listed = ok(third.vos(&["listaddrs"]));
    assert!(listed.contains("3 of 3 servers alive") && listed.contains("etcd"), "{listed}");

    // The cell's root is replicated to the other servers, and a volume lives on the second.
    for site in [&second.addr, &third.addr] {
        ok(third.vos(&["addsite", "root.cell", site]));
    }
    ok(third.vos(&["create", "proj", "--server", &second.addr]));
    let writer = VenusMount::start_with(&third, "etcd.test", &["--timeout", "2"])?;
    let rw = |rel: &str| writer.mountpoint.join(".etcd.test").join(rel);
    writer.venus_ok(&["mkmount", &rw("proj").display().to_string(), "proj"]);
    ok(third.vos(&["release", "root.cell"]));
    fs::write(rw("proj/notes"), b"written before the first server died")?;
    third.create_user("alice", "alice-secret")?;

    // The first server dies: a new client logs in through another server and reaches proj.
    first.kill9();
    let reader = VenusMount::start_with(&third, "etcd.test", &["--timeout", "2"])?;
    reader.login(1000, "alice", "alice-secret")?;
    assert_eq!(fs::read(reader.path("proj/notes"))?, b"written before the first server died");
    // Its lease runs out, and every server says it is down.
    eventually(Duration::from_secs(30), "the dead server listed as down", || {
        Ok(ok(third.vos(&["listaddrs"])).contains("2 of 3 servers alive"))
    })?;
    // Admin work goes on without it.
    ok(third.vos(&["create", "more", "--server", &third.addr]));

    // One etcd member dies: everything keeps working.
    etcd.kill9(0);
    ok(third.vos(&["create", "more2", "--server", &second.addr]));
    fs::write(rw("proj/one-member-down"), b"fine")?;
    assert_eq!(fs::read(reader.path("proj/one-member-down"))?, b"fine");

    // Two dead: volume operations fail clearly; connected clients' file access goes on.
    etcd.kill9(1);
    let refused = failed(third.vos(&["create", "more3", "--server", &second.addr]));
    assert!(refused.contains("cell database unavailable"), "{refused}");
    fs::write(rw("proj/no-quorum"), b"still served")?;
    assert_eq!(fs::read(rw("proj/no-quorum"))?, b"still served");
    assert_eq!(fs::read(reader.path("proj/notes"))?, b"written before the first server died");

    // A member back gives a quorum again.
    etcd.restart(1)?;
    etcd.wait_healthy()?;
    eventually(Duration::from_secs(30), "vos working again with a quorum", || {
        Ok(third.vos(&["create", "more3", "--server", &second.addr]).status.success())
    })?;
    let first_again = first.spawn_again();
    first_again?;
    eventually(Duration::from_secs(30), "the first server alive again", || {
        Ok(ok(third.vos(&["listaddrs"])).contains("3 of 3 servers alive"))
    })?;
    Ok(())
}

#[test]
fn a_deleted_users_token_is_refused_by_every_server_at_once() -> R {
    let etcd = EtcdCluster::start(3)?;
    let first = Vice::start_on_cell_db("users.test", &etcd.url())?;
    let second = Vice::join_cell_db(&first, &etcd.url())?;
    first.create_user("bob", "bob-secret")?;
    let rt = rt();
    // Every request is identified, a location lookup as much as a fetch.
    let ask = proto::Request::GetVolumeLocation { volume: VolumeRef::Name("root.cell".into()) };
    let mut clients = Vec::new();
    for addr in [&first.addr, &second.addr] {
        let mut c = rt.block_on(TestClient::connect(&only(&second, addr)))?;
        rt.block_on(c.login("bob", "bob-secret", 3600))?;
        rt.block_on(c.call_ok(&ask))?;
        clients.push(c);
    }
    ok(second.pts(&["delete", "bob"]));
    // Without the watch, servers would go on trusting bob for the 30 s their identity cache
    // keeps him; with it, his next request anywhere is refused (polled for 5 s at most, for
    // the watch's own latency).
    let started = Instant::now();
    for c in &clients {
        eventually(Duration::from_secs(5), "bob's token refused", || {
            let r = rt.block_on(c.call_ok(&ask));
            Ok(r.is_err_and(|e| format!("{e:#}").contains("no longer exists")))
        })?;
    }
    eprintln!("a deleted user was refused by every server {:?} after pts delete", started.elapsed());
    Ok(())
}

/// Runs `vos move` with a 2 s lock, stopped at `stage` (until killed); returns once stopped.
fn vos_stopped_at(vice: &Vice, args: &[&str], stage: &str) -> anyhow::Result<std::process::Child> {
    let err = vice.dir.path().join(format!("vos-{stage}.err"));
    let mut child = Command::new(bin("vos"))
        .args(["--lock-ttl", "2"])
        .args(args)
        .args(["--stop-at", stage])
        .env("AFS_CELL_FILE", vice.cell_file_path())
        .env("AFS_ADMIN_CRED", vice.admin_cred_path())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err)?)
        .spawn()?;
    eventually(Duration::from_secs(60), "vos reaching its stage", || {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("vos exited with {status}: {}", fs::read_to_string(&err)?);
        }
        Ok(fs::read_to_string(&err)?.contains("stopped"))
    })?;
    Ok(child)
}

fn holds(vice: &Vice, server: &str, volume: &str) -> bool {
    ok(vice.vos(&["listvol", server])).lines().any(|l| l.split_whitespace().next() == Some(volume))
}

#[test]
fn a_vos_move_killed_at_any_stage_is_settled_by_the_next_fences_keep_old_holders_out_and_one_of_two_wins() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let etcd = EtcdCluster::start(3)?;
    let a = Vice::start_on_cell_db("move.test", &etcd.url())?;
    let b = Vice::join_cell_db(&a, &etcd.url())?;
    ok(b.vos(&["create", "mv", "--server", &a.addr]));
    let client = VenusMount::start_with(&b, "move.test", &["--timeout", "2"])?;
    client.venus_ok(&["mkmount", &client.path("mv").display().to_string(), "mv"]);
    fs::write(client.path("mv/big"), Noise::bytes(3, 3 << 20))?;
    let written = std::cell::Cell::new(0);
    let write_one = || -> R {
        let n = written.get();
        fs::write(client.path(&format!("mv/f{n}")), format!("file {n}"))?;
        written.set(n + 1);
        Ok(())
    };

    // Killed after the copy: the source never froze; the next vos rolls back.
    let mut v = vos_stopped_at(&b, &["move", "mv", &b.addr], "copied")?;
    assert!(holds(&b, &b.addr, "mv"), "the target has the copy");
    let busy = failed(b.vos(&["move", "mv", &b.addr]));
    assert!(busy.contains("locked by another admin"), "a second move while the first holds the lock: {busy}");
    v.kill()?;
    v.wait()?;
    write_one()?;
    eventually(Duration::from_secs(10), "the lock running out", || {
        let out = b.vos(&["move", "mv", "--resume"]);
        Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Rolled back"))
    })?;
    assert!(holds(&b, &a.addr, "mv") && !holds(&b, &b.addr, "mv"), "whole on its source only");

    // Killed while frozen: the source unfreezes by itself once the lock runs out (the write
    // waits, then goes through), and the next move rolls back first, then moves.
    let mut v = vos_stopped_at(&b, &["move", "mv", &b.addr], "frozen")?;
    v.kill()?;
    v.wait()?;
    write_one()?;
    let mut out = b.vos(&["move", "mv", &b.addr]);
    while !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("locked by another admin") {
        std::thread::sleep(Duration::from_millis(200));
        out = b.vos(&["move", "mv", &b.addr]);
    }
    let out = ok(out);
    assert!(out.contains("Rolled back an unfinished move") && out.contains("Moved mv"), "{out}");
    assert!(holds(&b, &b.addr, "mv") && !holds(&b, &a.addr, "mv"));
    write_one()?;

    // Killed after the switch: the location names the target; the source lets its frozen
    // copy go once the lock runs out, and the next vos finishes what is left.
    let mut v = vos_stopped_at(&b, &["move", "mv", &a.addr], "switched")?;
    v.kill()?;
    v.wait()?;
    write_one()?;
    let mut out = b.vos(&["move", "mv", "--resume"]);
    while !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("locked by another admin") {
        std::thread::sleep(Duration::from_millis(200));
        out = b.vos(&["move", "mv", "--resume"]);
    }
    let out = ok(out);
    assert!(out.contains("Finished an unfinished move"), "{out}");
    eventually(Duration::from_secs(10), "the source letting go", || Ok(!holds(&b, &b.addr, "mv")))?;
    assert!(holds(&b, &a.addr, "mv"));
    write_one()?;

    // Nothing was lost, as another client sees it.
    let other = VenusMount::start_with(&b, "move.test", &["--timeout", "2"])?;
    assert_eq!(blake3::hash(&fs::read(other.path("mv/big"))?), blake3::hash(&Noise::bytes(3, 3 << 20)));
    for i in 0..written.get() {
        assert_eq!(fs::read(other.path(&format!("mv/f{i}")))?, format!("file {i}").as_bytes(), "f{i}");
    }

    // A stale fencing token is refused: the lock of an admin whose lease ran out, even after
    // another took the lock and let it go.
    let rt = rt();
    let admin = rt.block_on(TestClient::connect_as(&only(&b, &b.addr), b.admin_identity()))?;
    let take = |ttl_secs| proto::Request::TakeLock { volume: "mv".into(), purpose: "test".into(), ttl_secs };
    let fence = match rt.block_on(admin.call_ok(&take(1)))? {
        proto::Response::Locked { fence, .. } => fence,
        other => anyhow::bail!("unexpected {other:?}"),
    };
    let id = match rt
        .block_on(admin.call_ok(&proto::Request::GetVolumeLocation { volume: VolumeRef::Name("mv".into()) }))?
    {
        proto::Response::Location { entry, .. } => entry.rw,
        other => anyhow::bail!("unexpected {other:?}"),
    };
    let freeze = |fence: &Fence| proto::Request::Fenced {
        fence: fence.clone(),
        request: Box::new(proto::Request::FreezeVolume { id, frozen: true }),
    };
    std::thread::sleep(Duration::from_millis(2500));
    let stale = rt.block_on(admin.call_ok(&freeze(&fence))).unwrap_err();
    assert!(format!("{stale:#}").contains("stale fencing token"), "{stale:#}");
    let newer = match rt.block_on(admin.call_ok(&take(5)))? {
        proto::Response::Locked { fence, .. } => fence,
        other => anyhow::bail!("unexpected {other:?}"),
    };
    assert!(newer.token > fence.token);
    rt.block_on(admin.call_ok(&proto::Request::ReleaseLock { fence: newer }))?;
    let stale = rt.block_on(admin.call_ok(&freeze(&fence))).unwrap_err();
    assert!(format!("{stale:#}").contains("stale fencing token"), "{stale:#}");
    write_one()?;

    // Two admins move the volume at once: exactly one wins; the other is refused by the lock
    // (or, started after the winner ended, finds the volume there already).
    let spawn = || {
        Command::new(bin("vos"))
            .args(["move", "mv", &b.addr])
            .env("AFS_CELL_FILE", b.cell_file_path())
            .env("AFS_ADMIN_CRED", b.admin_cred_path())
            .output()
    };
    let (one, two) = std::thread::scope(|s| {
        let one = s.spawn(spawn);
        let two = s.spawn(spawn);
        (one.join(), two.join())
    });
    let outs = [one.map_err(|_| anyhow::anyhow!("vos thread"))??, two.map_err(|_| anyhow::anyhow!("vos thread"))??];
    let won = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        won,
        1,
        "exactly one move wins: {:?}",
        outs.iter().map(|o| String::from_utf8_lossy(&o.stderr)).collect::<Vec<_>>()
    );
    let lost = outs.iter().find(|o| !o.status.success()).map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    let lost = lost.unwrap_or_default();
    assert!(lost.contains("locked by another admin") || lost.contains("already on"), "{lost}");
    assert!(holds(&b, &b.addr, "mv") && !holds(&b, &a.addr, "mv"), "on the winner's target only");
    write_one()?;
    for i in 0..written.get() {
        assert_eq!(fs::read(other.path(&format!("mv/f{i}")))?, format!("file {i}").as_bytes(), "f{i}");
    }
    Ok(())
}

#[test]
fn an_embedded_cell_database_moves_to_etcd_with_its_volumes_users_and_files() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let etcd = EtcdCluster::start(3)?;
    let mut vice = Vice::start("migrate.test")?;
    ok(vice.vos(&["create", "data"]));
    vice.create_user("carol", "carol-secret")?;
    {
        let m = VenusMount::start(&vice, "migrate.test")?;
        m.venus_ok(&["mkmount", &m.path("data").display().to_string(), "data"]);
        fs::write(m.path("data/kept"), b"made on the embedded database")?;
    }
    vice.stop()?;
    let out = Command::new(bin("vice"))
        .args(["migrate-cell-db", "--data"])
        .arg(vice.data())
        .args(["--to", &etcd.url()])
        .output()?;
    let said = ok(out);
    assert!(said.contains("copied"), "{said}");
    // Twice is refused: this server is on etcd already.
    let again = Command::new(bin("vice"))
        .args(["migrate-cell-db", "--data"])
        .arg(vice.data())
        .args(["--to", &etcd.url()])
        .output()?;
    failed(again);
    vice.spawn_again()?;
    assert!(ok(vice.vos(&["listaddrs"])).contains("etcd"));
    let second = Vice::join_cell_db(&vice, &etcd.url())?;
    assert!(ok(second.vos(&["listvldb"])).contains("data"));
    let m = VenusMount::start(&second, "migrate.test")?;
    m.login(1000, "carol", "carol-secret")?;
    assert_eq!(fs::read(m.path("data/kept"))?, b"made on the embedded database");
    Ok(())
}
