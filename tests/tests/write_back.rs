//! Write-back permits, end to end: a real `vice serve` and real venus mounts. Changes made under
//! a permit return once they are in the client's log and reach the server in batches; another
//! client's first look at the volume recalls the permit, and it sees every change whose call
//! had returned. Counts, not timings.

use std::fs;
use std::time::{Duration, Instant};

use e2e::*;

type R = anyhow::Result<()>;

/// Waits (bounded) until venus holds a write-back permit on some volume.
fn wait_permit(m: &VenusMount) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.counter("permits_granted") == 0 {
        anyhow::ensure!(Instant::now() < deadline, "no write-back permit granted; log:\n{}", tail(&m.log_text(), 40));
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The requests that carried changes to the server.
fn change_requests(m: &VenusMount) -> u64 {
    ["Reintegrate", "Create", "MakeDir", "Store", "PutChunksAndMutate", "Remove", "SetAttr", "Rename"]
        .iter()
        .map(|n| m.rpcs(n))
        .sum()
}

#[test]
fn creates_under_a_permit_go_in_batches_and_a_second_clients_listing_sees_every_one() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("wb.test")?;
    let a = VenusMount::start_with(&vice, "wb.test", &["--write-back-window", "1000"])?;
    let b = VenusMount::start(&vice, "wb.test")?;
    fs::create_dir(a.path("tree"))?;
    wait_permit(&a)?;
    let before = change_requests(&a);
    const FILES: usize = 2000;
    for i in 0..FILES {
        fs::write(a.path(&format!("tree/f{i}")), b"")?;
    }
    // Every create returned; b's listing recalls the permit and must see them all.
    let listed = fs::read_dir(b.path("tree"))?.count();
    assert_eq!(listed, FILES, "the second client sees every create whose call returned");
    assert_eq!(a.counter("permit_recalls"), 1, "one recall");
    // `venus status` says how fast the volume's log went out.
    let status = a.status();
    let drained: Vec<&serde_json::Value> =
        status["volumes"].as_array().into_iter().flatten().filter(|v| !v["drain"].is_null()).collect();
    assert_eq!(drained.len(), 1, "one volume drained: {}", status["volumes"]);
    assert!(drained[0]["drain"]["records_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{}", drained[0]);
    assert_eq!(drained[0]["pending_records"], 0, "{}", drained[0]);
    let sent = change_requests(&a) - before;
    // A batch is at most 200 records; every window may send a part-filled one too.
    let bound = FILES.div_ceil(200) as u64 + 10;
    eprintln!("{sent} requests carried {FILES} creates: {}", a.status()["counters"]["rpcs"]);
    assert!(
        sent <= bound,
        "{sent} requests carried {FILES} creates (at most {bound}): {}",
        a.status()["counters"]["rpcs"]
    );
    Ok(())
}

#[test]
fn fsync_of_a_file_made_under_a_permit_returns_once_the_server_has_it() -> R {
    if !fuse_available() {
        return Ok(());
    }
    // A long window: without the fsync, nothing would be sent for a minute.
    let vice = Vice::start("wbsync.test")?;
    let a = VenusMount::start_with(&vice, "wbsync.test", &["--write-back-window", "60000"])?;
    fs::create_dir(a.path("d"))?;
    wait_permit(&a)?;
    let path = a.path("d/kept.txt");
    let sent = a.rpcs("Reintegrate");
    let mut f = fs::File::create(&path)?;
    std::io::Write::write_all(&mut f, b"durable on the server")?;
    assert_eq!(a.rpcs("Reintegrate"), sent, "the create waits in the log");
    f.sync_all()?;
    assert!(a.rpcs("Reintegrate") > sent, "fsync sent the log");
    assert_eq!(a.pending(), 0, "nothing of it is left in the log");
    assert_eq!(a.counter("permit_recalls"), 0, "nobody else looked");
    // Straight from the server, not through any venus: the file and its bytes are there.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let c = TestClient::connect(&vice.cell_file()).await?;
        let root = c.root_of("root.cell").await?;
        let dir = lookup(&c, root, "d").await?;
        let file = lookup(&c, dir, "kept.txt").await?;
        let (_, bytes) = c.fetch(file).await?;
        anyhow::ensure!(bytes == b"durable on the server", "server has {:?}", String::from_utf8_lossy(&bytes));
        anyhow::Ok(())
    })?;
    drop(f);
    Ok(())
}

async fn lookup(c: &TestClient, dir: proto::Fid, name: &str) -> anyhow::Result<proto::Fid> {
    match c.call_ok(&proto::Request::FetchDir { fid: dir }).await? {
        proto::Response::Dir { entries, .. } => entries
            .iter()
            .find(|e| e.name.as_str() == name)
            .map(|e| proto::Fid::new(dir.volume, e.object))
            .ok_or_else(|| anyhow::anyhow!("{name} not in the listing")),
        other => anyhow::bail!("unexpected {other:?}"),
    }
}

/// What the server holds under `dir` of the root volume, read by a client of its own (no venus):
/// each file's name and bytes.
fn server_files(vice: &Vice, dir: &str) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let c = TestClient::connect(&vice.cell_file()).await?;
        let root = c.root_of("root.cell").await?;
        let dir = lookup(&c, root, dir).await?;
        let entries = match c.call_ok(&proto::Request::FetchDir { fid: dir }).await? {
            proto::Response::Dir { entries, .. } => entries,
            other => anyhow::bail!("unexpected {other:?}"),
        };
        let mut files = std::collections::BTreeMap::new();
        for e in entries {
            let (_, bytes) = c.fetch(proto::Fid::new(dir.volume, e.object)).await?;
            files.insert(e.name.as_str().to_string(), bytes);
        }
        Ok(files)
    })
}

fn body(i: usize) -> Vec<u8> {
    format!("file {i} written under a permit\n").into_bytes()
}

/// Venus killed (SIGKILL) while it holds a permit with changes logged and unsent: they were in
/// the log when their calls returned, so the restarted venus sends them, each once (a change
/// applied twice would come back as a conflict: the name is taken).
#[test]
fn changes_logged_under_a_permit_survive_sigkill_of_venus_and_reach_the_server_once() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start_with("wbkill.test", &["--permit-lease", "3"])?;
    // A long window: nothing is sent before the kill.
    let mut a = VenusMount::start_with(&vice, "wbkill.test", &["--write-back-window", "60000"])?;
    fs::create_dir(a.path("d"))?;
    wait_permit(&a)?;
    let sent = a.rpcs("Reintegrate");
    const FILES: usize = 50;
    for i in 0..FILES {
        fs::write(a.path(&format!("d/f{i}")), body(i))?;
    }
    assert_eq!(a.rpcs("Reintegrate"), sent, "nothing sent before the kill");
    assert!(a.pending() >= FILES as u64, "{}", a.status());
    a.kill9();
    restarted_sends_each_once(&mut a, &vice, FILES)
}

/// A restarted venus sends what its log holds: afterwards the server has `d/f0`..`d/f{files-1}`
/// with their bodies and nothing else, and no change came back as a conflict (one applied
/// twice would: its name is taken).
fn restarted_sends_each_once(a: &mut VenusMount, vice: &Vice, files: usize) -> R {
    a.restart_stopped()?;
    a.venus_ok(&["sync"]);
    assert_eq!(a.pending(), 0);
    assert_eq!(a.status()["conflicts"], 0, "every change applied once: {}", tail(&a.log_text(), 30));
    let on_server = server_files(vice, "d")?;
    assert_eq!(on_server.len(), files, "{:?}", on_server.keys());
    for i in 0..files {
        assert_eq!(on_server.get(&format!("f{i}")), Some(&body(i)), "f{i}");
    }
    Ok(())
}

/// vice killed (SIGKILL) while a client holds a permit: what `fsync` acknowledged is on the
/// server's disk even with the client gone too; the restarted server still knows the permit
/// (its store has it) and recalls it, waiting out the lease of the dead holder; the restarted
/// client sends the rest, once.
#[test]
fn sigkill_of_vice_loses_nothing_fsync_acknowledged_and_the_rest_is_sent_once() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let mut vice = Vice::start_with("wbvice.test", &["--permit-lease", "3"])?;
    let mut a = VenusMount::start_with(&vice, "wbvice.test", &["--write-back-window", "60000", "--timeout", "3"])?;
    fs::create_dir(a.path("d"))?;
    wait_permit(&a)?;
    for i in 0..10 {
        fs::write(a.path(&format!("d/f{i}")), body(i))?;
    }
    // fsync of the last: it and everything logged before it are on the server when it returns.
    fs::File::open(a.path("d/f9"))?.sync_all()?;
    assert_eq!(a.pending(), 0, "fsync sent the log");
    for i in 10..20 {
        fs::write(a.path(&format!("d/f{i}")), body(i))?;
    }
    assert!(a.pending() >= 10);
    vice.kill9();
    a.kill9();
    vice.restart()?;
    // Only the server now: the holder is dead, so the first request waits out its lease.
    let files = server_files(&vice, "d")?;
    for i in 0..10 {
        assert_eq!(files.get(&format!("f{i}")), Some(&body(i)), "f{i}, acknowledged by fsync");
    }
    assert!(vice.log_text().contains("write-back permits held before the restart"), "{}", tail(&vice.log_text(), 20));
    restarted_sends_each_once(&mut a, &vice, 20)
}

/// The holder of a permit cut off by the network (a proxy drops everything): the other client
/// is answered once the lease is over, and works on; when the holder is back its log is sent like
/// an offline session's: its own names arrive, and a name both made is a conflict with both
/// versions kept.
#[test]
fn a_partitioned_holder_loses_its_permit_after_the_lease_and_reintegrates_later_keeping_conflicts() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start_with("wbcut.test", &["--permit-lease", "3"])?;
    let proxy = UdpProxy::start(&vice.addr)?;
    let cell_dir = tempfile::tempdir()?;
    let cell_file = proxy.cell_file(&vice, cell_dir.path())?;
    let a = VenusMount::start_with_cell_file(
        &cell_file,
        "wbcut.test",
        &["--write-back-window", "60000", "--timeout", "3"],
    )?;
    let b = VenusMount::start(&vice, "wbcut.test")?;
    let watched = [Watched::vice(&vice), Watched::venus(&a), Watched::venus(&b)];
    with_watchdog(Duration::from_secs(120), &watched, move || -> R {
        fs::create_dir(a.path("d"))?;
        // b's mount just looked at the volume: the server may grant no permit for a few
        // seconds, and venus asks again after its next change. So a changes a file (at least
        // once) until it holds one.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            fs::write(a.path("d/seen-by-both"), b"made before the cut")?;
            if a.counter("permits_granted") > 0 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "no permit: {}", tail(&a.log_text(), 20));
            std::thread::sleep(Duration::from_millis(200));
        }
        a.venus_ok(&["sync"]);
        fs::write(a.path("d/only-a"), b"a's, made under the permit")?;
        fs::write(a.path("d/both"), b"a's version")?;
        assert!(a.pending() >= 2);
        proxy.cut(true);
        // b's look recalls a's permit; a cannot answer, so b waits out the lease, then goes on.
        let started = Instant::now();
        assert_eq!(fs::read(b.path("d/seen-by-both"))?, b"made before the cut");
        let waited = started.elapsed();
        assert!(!b.path("d/only-a").exists(), "a's unsent changes cannot be seen yet");
        fs::write(b.path("d/both"), b"b's version")?;
        fs::write(b.path("d/only-b"), b"b's")?;
        eprintln!("b was answered after {waited:?} (lease 3 s)");
        proxy.cut(false);
        a.wait_reintegrated()?;
        a.venus_ok(&["sync"]);
        assert_eq!(a.pending(), 0);
        // Everything of both is there; the name both made holds b's (the server had it first),
        // and a's is kept beside it.
        assert_eq!(fs::read(b.path("d/only-a"))?, b"a's, made under the permit");
        assert_eq!(fs::read(b.path("d/only-b"))?, b"b's");
        assert_eq!(fs::read(b.path("d/both"))?, b"b's version");
        let kept: Vec<String> = fs::read_dir(b.path("d"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("both.conflict"))
            .collect();
        assert_eq!(kept.len(), 1, "a's version kept beside b's: {kept:?}");
        assert_eq!(fs::read(b.path(&format!("d/{}", kept[0])))?, b"a's version");
        assert!(a.status()["conflicts"].as_u64() >= Some(1), "{}", a.status());
        Ok(())
    })
}

/// One series of vice's metrics (`name{labels}` as printed), as a number.
fn vice_metric(metrics_port: u16, series: &str) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let prefix = format!("{series} ");
    let line = body.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
    line.ok_or_else(|| anyhow::anyhow!("no {series} in:\n{body}"))?.trim().parse().map_err(Into::into)
}

/// vice's count of permits that ended `how` ("returned" or "expired"), from its metrics.
fn permits_ended(metrics_port: u16, how: &str) -> anyhow::Result<u64> {
    vice_metric(metrics_port, &format!("vice_permits_ended_total{{outcome=\"{how}\"}}"))
}

/// A clean stop (SIGTERM) of the holder sends what its permit holds and gives the permit back:
/// the server has every change at once, and no lease is waited out.
#[test]
fn a_clean_stop_sends_what_the_permit_holds_and_gives_it_back() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let vice = Vice::start_with("wbstop.test", &["--metrics", &format!("127.0.0.1:{port}")])?;
    // A window longer than the test: only the stop can send these.
    let mut a = VenusMount::start_with(&vice, "wbstop.test", &["--write-back-window", "600000"])?;
    fs::create_dir(a.path("d"))?;
    wait_permit(&a)?;
    for i in 0..50 {
        fs::write(a.path(&format!("d/f{i}")), body(i))?;
    }
    assert!(a.pending() >= 50, "the changes wait in the log");
    assert!(a.stop()?, "venus stopped cleanly");
    assert_eq!(permits_ended(port, "returned")?, 1, "the permit was given back");
    let files = server_files(&vice, "d")?;
    for i in 0..50 {
        assert_eq!(files.get(&format!("f{i}")), Some(&body(i)), "f{i} is on the server");
    }
    assert_eq!(permits_ended(port, "expired")?, 0, "no lease was waited out");
    Ok(())
}

/// A clean stop while a permit request is on its way (the server's answers come slowly through
/// a proxy): a permit granted after the stop began goes straight back, instead of being held on
/// the server, for a venus that is gone, until its lease runs out.
#[test]
fn a_permit_granted_while_venus_stops_goes_straight_back() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let vice = Vice::start_with("wbask.test", &["--metrics", &format!("127.0.0.1:{port}")])?;
    let slow_answers = Impairment::delayed(Duration::from_millis(300), Duration::ZERO);
    let proxy = LossyProxy::start_with(&vice.addr, 1, Impairment::NONE, slow_answers)?;
    let cell_dir = tempfile::tempdir()?;
    let mut a = VenusMount::start_with_cell_file(&proxy.cell_file(&vice, cell_dir.path())?, "wbask.test", &[])?;
    // Straight to the server; asks for the volume's permit in the background, whose answer
    // is still on its way when the stop begins.
    fs::create_dir(a.path("d"))?;
    assert!(a.stop()?, "venus stopped cleanly");
    assert!(vice_metric(port, "vice_permits_granted_total")? >= 1, "the permit was granted");
    assert_eq!(vice_metric(port, "vice_permits")?, 0, "no permit is held for the stopped venus");
    assert_eq!(permits_ended(port, "returned")?, vice_metric(port, "vice_permits_granted_total")?);
    Ok(())
}
