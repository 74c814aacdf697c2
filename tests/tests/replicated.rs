//! Replicated read-write volumes: three (or more) real `vice` servers on 127.0.0.1 holding one
//! volume as a consensus group, real venus mounts using it with plain file system calls, and
//! the group's members killed, stopped, wiped and changed while they do.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::*;

type R = anyhow::Result<()>;

const CELL: &str = "rep.test";
/// Venus gives up on a silent server after 2 s (instead of its default) so tests move on.
const QUICK: &[&str] = &["--timeout", "2"];

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cell of `n` servers, the first holding the cell database.
fn cell(n: usize) -> anyhow::Result<Vec<Vice>> {
    let first = Vice::start(CELL)?;
    let mut all = vec![first];
    for _ in 1..n {
        let next = Vice::join(&all[0])?;
        all.push(next);
    }
    Ok(all)
}

/// A group as `vos examine --json` reports it.
#[derive(Default)]
struct Group {
    /// The server that says it leads.
    leader: Option<u64>,
    /// (server, last applied index) of each member answering.
    applied: Vec<(u64, Option<u64>)>,
}

fn group(admin: &Vice, name: &str) -> anyhow::Result<Group> {
    let out = admin.vos(&["examine", name, "--json"]);
    if !out.status.success() {
        return Ok(Group::default());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let members = v["group"].as_array().cloned().unwrap_or_default();
    let leader = members.iter().find_map(|m| m["leader"].as_u64().filter(|l| Some(*l) == m["server"].as_u64()));
    let applied = members.iter().map(|m| (m["server"].as_u64().unwrap_or(0), m["applied"].as_u64())).collect();
    Ok(Group { leader, applied })
}

/// Which of `servers` leads `name`'s group (by its position in `servers`).
fn leader_index(admin: &Vice, servers: &[Vice], name: &str) -> anyhow::Result<usize> {
    let mut found = None;
    eventually(Duration::from_secs(20), "a leader elected", || {
        found = group(admin, name)?.leader;
        Ok(found.is_some())
    })?;
    // Server ids are given in the order the servers joined: the first is 1.
    let index = found.unwrap_or(0).saturating_sub(1) as usize;
    anyhow::ensure!(index < servers.len(), "leader {found:?} is not one of the {} servers", servers.len());
    Ok(index)
}

/// The contents digest of the copy `server` holds (`vos dump --server`).
fn digest_on(admin: &Vice, server: &Vice, name: &str) -> anyhow::Result<String> {
    let file = admin.dir.path().join(format!("{name}-{}.dump", server.addr.replace([':', '.'], "_")));
    let out = ok(admin.vos(&["dump", name, "--server", &server.addr, "--file", &file.display().to_string()]));
    let line = out.lines().find(|l| l.starts_with("Contents digest ")).unwrap_or_default();
    anyhow::ensure!(!line.is_empty(), "no digest in {out}");
    Ok(line.trim_start_matches("Contents digest ").to_string())
}

/// Waits until every member applied as much as the leader, then checks every member's copy
/// has the same contents.
fn members_agree(admin: &Vice, servers: &[&Vice], name: &str) -> R {
    eventually(Duration::from_secs(60), "every member caught up", || {
        let applied = group(admin, name)?.applied;
        let first = applied.first().and_then(|a| a.1);
        Ok(applied.len() == servers.len() && first.is_some() && applied.iter().all(|a| a.1 == first))
    })?;
    let digests: Vec<String> = servers.iter().map(|s| digest_on(admin, s, name)).collect::<anyhow::Result<_>>()?;
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "the members' copies differ: {digests:?}");
    Ok(())
}

/// `rel` in the cell's read-write tree of mount `m` (`MOUNT/.<cell>/<rel>`).
fn rw(m: &VenusMount, rel: &str) -> std::path::PathBuf {
    m.mountpoint.join(format!(".{CELL}")).join(rel)
}

/// Mounts the volume `rep` at `rep` in the cell's root, through `m`.
fn mount_rep(m: &VenusMount) {
    m.venus_ok(&["mkmount", &rw(m, "rep").display().to_string(), "rep"]);
}

/// What the watchdog names when a test hangs: every server and mount.
fn watching(servers: &[Vice], mounts: &[&VenusMount]) -> Vec<Watched> {
    servers.iter().map(Watched::vice).chain(mounts.iter().map(|m| Watched::venus(m))).collect()
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[test]
fn a_replicated_volume_is_served_by_its_leader_and_every_member_holds_the_same_copy() -> R {
    let servers = cell(3)?;
    let created = ok(servers[0].vos(&["create", "rep", "--replicas", "3"]));
    assert!(created.contains("replicated on servers"), "{created}");
    let a = VenusMount::start_with(&servers[0], CELL, QUICK)?;
    let b = VenusMount::start_with(&servers[0], CELL, QUICK)?;
    let watched = watching(&servers, &[&a, &b]);
    with_watchdog(Duration::from_secs(240), &watched, move || -> R {
        let admin = &servers[0];
        mount_rep(&a);
        fs::create_dir(rw(&a, "rep/dir"))?;
        for i in 0..20 {
            write_synced(&rw(&a, &format!("rep/dir/small{i}")), format!("small file {i}").as_bytes())?;
        }
        // Larger than a chunk: its chunks travel to the members before the store commits.
        let big = Noise::bytes(7, 3 << 20);
        write_synced(&rw(&a, "rep/big"), &big)?;
        fs::rename(rw(&a, "rep/dir/small0"), rw(&a, "rep/renamed"))?;
        fs::remove_file(rw(&a, "rep/dir/small1"))?;

        // Another client sees it all (and its changes reach the first).
        assert_eq!(fs::read(rw(&b, "rep/big"))?, big);
        assert_eq!(fs::read(rw(&b, "rep/renamed"))?, b"small file 0");
        assert!(!rw(&b, "rep/dir/small1").exists());
        write_synced(&rw(&b, "rep/from-b"), b"from b")?;
        assert_eq!(fs::read(rw(&a, "rep/from-b"))?, b"from b");

        let shown = ok(admin.vos(&["examine", "rep"]));
        assert!(shown.contains("group     leader server"), "{shown}");
        assert_eq!(shown.matches("    member    server").count(), 3, "{shown}");
        let all: Vec<&Vice> = servers.iter().collect();
        members_agree(admin, &all, "rep")?;

        // Removed, it leaves every member.
        drop((a, b));
        ok(admin.vos(&["remove", "rep"]));
        for s in &servers {
            let listed = ok(admin.vos(&["listvol", &s.addr]));
            assert!(!listed.contains("rep"), "{listed}");
        }
        Ok(())
    })
}

#[test]
fn killing_the_leader_under_a_writer_and_a_reader_loses_nothing_acknowledged() -> R {
    let mut servers = cell(3)?;
    ok(servers[0].vos(&["create", "rep", "--replicas", "3"]));
    let a = VenusMount::start_with(&servers[0], CELL, QUICK)?;
    let watched = watching(&servers, &[&a]);
    with_watchdog(Duration::from_secs(300), &watched, move || -> R {
        mount_rep(&a);
        fs::create_dir(rw(&a, "rep/w"))?;
        for i in 0..10 {
            write_synced(&rw(&a, &format!("rep/r{i}")), format!("read me {i}").as_bytes())?;
        }
        let leader = leader_index(&servers[0], &servers, "rep")?;

        // A writer and a reader loop on the volume through the mount.
        let stop = Arc::new(AtomicBool::new(false));
        let base = rw(&a, "rep");
        let writer = {
            let (stop, base) = (stop.clone(), base.clone());
            std::thread::spawn(move || -> anyhow::Result<(u64, Duration)> {
                let (mut acked, mut longest) = (0u64, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    write_synced(&base.join(format!("w/{acked}")), format!("write {acked}").as_bytes())?;
                    longest = longest.max(started.elapsed());
                    acked += 1;
                }
                Ok((acked, longest))
            })
        };
        let reader = {
            let (stop, base) = (stop.clone(), base.clone());
            std::thread::spawn(move || -> anyhow::Result<(u64, Duration)> {
                let (mut reads, mut longest) = (0u64, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let i = reads % 10;
                    let started = Instant::now();
                    let got = fs::read(base.join(format!("r{i}")))?;
                    anyhow::ensure!(got == format!("read me {i}").as_bytes(), "r{i} read {got:?}");
                    fs::read_dir(base.join("w"))?.count();
                    longest = longest.max(started.elapsed());
                    reads += 1;
                }
                Ok((reads, longest))
            })
        };
        std::thread::sleep(Duration::from_secs(2));
        servers[leader].kill9();
        let killed_at = Instant::now();
        // The loops go on past the election.
        std::thread::sleep(Duration::from_secs(8));
        stop.store(true, Ordering::Relaxed);
        let (acked, write_pause) = writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        let (reads, read_pause) = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        eprintln!(
            "leader killed {:?} ago: {acked} writes acknowledged (longest {write_pause:?}), {reads} reads (longest {read_pause:?})",
            killed_at.elapsed()
        );
        assert!(acked > 10 && reads > 10, "the loops made progress: {acked} writes, {reads} reads");

        // The killed server comes back and catches up; once the writer's venus sent anything
        // it logged, a fresh client reads every write.
        servers[leader].spawn_again()?;
        a.wait_reintegrated()?;
        let b = VenusMount::start_with(&servers[0], CELL, QUICK)?;
        for i in 0..acked {
            assert_eq!(fs::read(rw(&b, &format!("rep/w/{i}")))?, format!("write {i}").as_bytes());
        }
        let all: Vec<&Vice> = servers.iter().collect();
        members_agree(&servers[0], &all, "rep")?;
        Ok(())
    })
}

#[test]
fn a_client_that_reaches_only_a_minority_works_disconnected_and_reintegrates() -> R {
    let mut servers = cell(3)?;
    ok(servers[0].vos(&["create", "rep", "--replicas", "3"]));
    let a = VenusMount::start_with(&servers[0], CELL, QUICK)?;
    let watched = watching(&servers, &[&a]);
    with_watchdog(Duration::from_secs(300), &watched, move || -> R {
        mount_rep(&a);
        write_synced(&rw(&a, "rep/before"), b"written with all three up")?;
        // Two of the three members stop: the one left cannot commit anything alone.
        servers[1].stop()?;
        servers[2].stop()?;
        for i in 0..5 {
            write_synced(&rw(&a, &format!("rep/minority{i}")), format!("written to a minority {i}").as_bytes())?;
        }
        assert_eq!(fs::read(rw(&a, "rep/before"))?, b"written with all three up");
        assert!(a.pending() >= 5, "the changes wait in the log: {} pending", a.pending());
        let status = a.status();
        assert!(status.to_string().contains("minority0") || a.pending() >= 5, "{status}");
        // One member back makes a majority: the log goes in, and another client sees it.
        servers[1].spawn_again()?;
        a.wait_reintegrated()?;
        let b = VenusMount::start_with(&servers[0], CELL, QUICK)?;
        for i in 0..5 {
            assert_eq!(fs::read(rw(&b, &format!("rep/minority{i}")))?, format!("written to a minority {i}").as_bytes());
        }
        servers[2].spawn_again()?;
        let all: Vec<&Vice> = servers.iter().collect();
        members_agree(&servers[0], &all, "rep")?;
        Ok(())
    })
}

/// A writer on `base` until `stop`: how many files it wrote (each acknowledged).
fn writer(
    base: std::path::PathBuf,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    std::thread::spawn(move || -> anyhow::Result<u64> {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            write_synced(&base.join(format!("{prefix}{n}")), format!("{prefix} {n}").as_bytes())?;
            n += 1;
        }
        Ok(n)
    })
}

#[test]
fn a_member_whose_disk_is_lost_is_replaced_and_the_leader_moves_while_a_client_writes() -> R {
    let mut servers = cell(4)?;
    for s in servers.iter_mut() {
        // Snapshots (and log purges) often, so a new member cannot be sent the whole log.
        s.restart_with_env("VICE_SNAPSHOT_EVERY", "40")?;
    }
    let members = format!("{},{},{}", servers[0].addr, servers[1].addr, servers[2].addr);
    ok(servers[0].vos(&["create", "rep", "--servers", &members]));
    let a = VenusMount::start_with(&servers[0], CELL, QUICK)?;
    let watched = watching(&servers, &[&a]);
    with_watchdog(Duration::from_secs(300), &watched, move || -> R {
        mount_rep(&a);
        for i in 0..100 {
            write_synced(&rw(&a, &format!("rep/early{i}")), format!("early {i}").as_bytes())?;
        }
        // The third member's disk dies: the server is gone for good, and removed while down.
        servers[2].kill9();
        fs::remove_dir_all(servers[2].data())?;
        let lost = servers[2].addr.clone();
        ok(servers[0].vos(&["remreplica", "rep", &lost]));
        let shown = ok(servers[0].vos(&["examine", "rep"]));
        assert_eq!(shown.matches("    member    server").count(), 2, "{shown}");
        for i in 0..20 {
            write_synced(&rw(&a, &format!("rep/after-loss{i}")), format!("after-loss {i}").as_bytes())?;
        }

        // The leader's replica moves to the spare server while the client writes: the new
        // member is sent a snapshot, then the rest of the log; the old leader leaves and drops
        // its copy, and the client follows the next leader.
        let leader = leader_index(&servers[0], &servers, "rep")?;
        assert!(leader < 2, "the lost member leads");
        let stop = Arc::new(AtomicBool::new(false));
        let writing = writer(rw(&a, "rep"), "during", stop.clone());
        std::thread::sleep(Duration::from_millis(500));
        let (from, to) = (servers[leader].addr.clone(), servers[3].addr.clone());
        ok(servers[0].vos(&["move", "rep", &to, "--from", &from]));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let during = writing.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        assert!(during > 0);
        assert!(servers[3].log_text().contains("snapshot installed"), "{}", tail(&servers[3].log_text(), 30));
        let listed = ok(servers[0].vos(&["listvol", &from]));
        assert!(!listed.contains("rep"), "{listed}");

        // A fresh client reads everything acknowledged; the two members agree.
        a.wait_reintegrated()?;
        let stay = 1 - leader;
        let b = VenusMount::start_with(&servers[stay], CELL, QUICK)?;
        for (prefix, n) in [("early", 100), ("after-loss", 20), ("during", during)] {
            for i in 0..n {
                assert_eq!(fs::read(rw(&b, &format!("rep/{prefix}{i}")))?, format!("{prefix} {i}").as_bytes());
            }
        }
        members_agree(&servers[stay], &[&servers[stay], &servers[3]], "rep")?;
        Ok(())
    })
}

#[test]
fn a_partition_that_isolates_the_leader_with_one_client_commits_nothing_on_its_side() -> R {
    // Hosts 0-2 hold the servers; the client `a` is on host 3, `b` on host 4. Made before
    // anything else: the test moves onto the network's bridge, from where it reaches every host.
    let mut net = TestNetwork::new(5)?;
    let first = Vice::start_on(CELL, net.host(0))?;
    let mut servers = vec![first];
    for i in 1..3 {
        let next = Vice::join_on(&servers[0], net.host(i))?;
        servers.push(next);
    }
    ok(servers[0].vos(&["create", "rep", "--replicas", "3"]));
    let leader = leader_index(&servers[0], &servers, "rep")?;
    let a = VenusMount::start_on(net.host(3), &servers[0], CELL, QUICK)?;
    let b = VenusMount::start_on(net.host(4), &servers[0], CELL, QUICK)?;
    let watched = watching(&servers, &[&a, &b]);
    with_watchdog(Duration::from_secs(300), &watched, move || -> R {
        let admin = &servers[0];
        mount_rep(&a);
        write_synced(&rw(&a, "rep/shared"), b"before the partition")?;
        assert_eq!(fs::read(rw(&b, "rep/shared"))?, b"before the partition");
        let committed = group(admin, "rep")?;
        let applied_on = |g: &Group, i: usize| g.applied.iter().find(|m| m.0 == i as u64 + 1).and_then(|m| m.1);
        let before = applied_on(&committed, leader);

        // The leader and `a` on one side; the other two members and `b` on the other.
        let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        net.partition(&[leader, 3], &[others[0], others[1], 4])?;

        // `a` reaches only the old leader, which cannot commit without a majority: nothing `a`
        // does is acknowledged by a server, so it waits in `a`'s log.
        let started = Instant::now();
        write_synced(&rw(&a, "rep/from-a"), b"written beside the old leader")?;
        let first_write = started.elapsed();
        write_synced(&rw(&a, "rep/shared"), b"a's edit during the partition")?;
        eprintln!("beside the isolated leader: first write took {first_write:?}, both {:?}", started.elapsed());
        assert!(a.pending() >= 2, "a's changes wait in its log: {} pending", a.pending());
        // The majority elects a leader of its own and commits `b`'s changes.
        write_synced(&rw(&b, "rep/from-b"), b"written beside the majority")?;
        write_synced(&rw(&b, "rep/shared"), b"b's edit during the partition")?;
        b.wait_reintegrated()?;
        assert!(!rw(&b, "rep/from-a").exists(), "a change the majority never had is visible to b");
        let split = group(admin, "rep")?;
        assert_eq!(applied_on(&split, leader), before, "the isolated leader applied something");
        for &i in &others {
            assert!(applied_on(&split, i) > before, "member {i} did not commit b's changes: {:?}", split.applied);
        }

        // Healed: the old leader follows the new one, `a`'s log goes in (its edit of the file
        // both changed kept as a conflict copy), and every member holds the same copy.
        net.heal()?;
        a.wait_reintegrated()?;
        assert_eq!(fs::read(rw(&b, "rep/from-a"))?, b"written beside the old leader");
        assert_eq!(fs::read(rw(&a, "rep/from-b"))?, b"written beside the majority");
        assert_eq!(fs::read(rw(&b, "rep/shared"))?, b"b's edit during the partition");
        let copies: Vec<_> = fs::read_dir(rw(&b, "rep"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("shared.conflict-"))
            .collect();
        assert_eq!(copies.len(), 1, "one conflict copy of shared");
        assert_eq!(fs::read(copies[0].path())?, b"a's edit during the partition");
        let healed = leader_index(admin, &servers, "rep")?;
        eprintln!("leader {leader} isolated (split: {:?}); after healing the leader is {healed}", split.applied);
        let all: Vec<&Vice> = servers.iter().collect();
        members_agree(admin, &all, "rep")?;
        Ok(())
    })
}
