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
    let a = VenusMount::start(&vice, "wb.test")?;
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
