//! End-to-end tests of venus: a real `vice serve` on 127.0.0.1 and two real `venus` FUSE mounts
//! with separate caches, used only through `std::fs`.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use e2e::*;

type R = anyhow::Result<()>;

struct Two {
    vice: Vice,
    a: VenusMount,
    b: VenusMount,
}

fn two(cell: &str) -> anyhow::Result<Option<Two>> {
    two_with(cell, &[])
}

/// Two mounts that send every change while its system call waits (no write-back permits): for
/// tests of what the synchronous path costs.
fn two_sync(cell: &str) -> anyhow::Result<Option<Two>> {
    two_with(cell, &["--write-back-window", "0"])
}

fn two_with(cell: &str, extra: &[&str]) -> anyhow::Result<Option<Two>> {
    if !fuse_available() {
        return Ok(None);
    }
    let vice = Vice::start(cell)?;
    let a = VenusMount::start_with(&vice, cell, extra)?;
    let b = VenusMount::start_with(&vice, cell, extra)?;
    Ok(Some(Two { vice, a, b }))
}

#[test]
fn a_close_on_one_client_is_seen_by_the_next_open_on_the_other() -> R {
    let Some(t) = two("share.test")? else { return Ok(()) };
    fs::write(t.a.path("note.txt"), b"first version")?;
    assert_eq!(fs::read(t.b.path("note.txt"))?, b"first version");
    // B now holds it cached; A changes it; B's next open sees the change without remounting.
    fs::write(t.a.path("note.txt"), b"second, longer version")?;
    assert_eq!(fs::read(t.b.path("note.txt"))?, b"second, longer version");
    assert_eq!(fs::metadata(t.b.path("note.txt"))?.len(), 22);
    // And the other way round, through an explicit open/write/close.
    let mut f = fs::OpenOptions::new().append(true).open(t.b.path("note.txt"))?;
    f.write_all(b"!")?;
    drop(f);
    assert_eq!(fs::read(t.a.path("note.txt"))?, b"second, longer version!");
    Ok(())
}

#[test]
fn cached_files_and_attributes_cost_no_rpcs() -> R {
    let Some(t) = two("cached.test")? else { return Ok(()) };
    fs::write(t.a.path("data.bin"), Noise::bytes(3, 300_000))?;
    let first = fs::read(t.b.path("data.bin"))?;
    assert_eq!(first.len(), 300_000);
    let fetches = t.b.rpcs("FetchData");
    let statuses = t.b.rpcs("FetchStatus");
    assert_eq!(fetches, 1);
    for _ in 0..100 {
        let mut f = fs::File::open(t.b.path("data.bin"))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        assert_eq!(buf.len(), 300_000);
        fs::metadata(t.b.path("data.bin"))?;
    }
    assert_eq!(t.b.rpcs("FetchData"), fetches, "no FetchData after the first");
    assert_eq!(t.b.rpcs("FetchStatus"), statuses, "stat of a cached object with a promise makes no RPC");
    let hits = t.b.status()["counters"]["cache_hits"].as_u64().unwrap_or(0);
    assert!(hits >= 100, "cache hits counted: {hits}");
    Ok(())
}

#[test]
fn listing_a_directory_with_attributes_asks_for_them_in_one_request() -> R {
    let Some(t) = two("bulk.test")? else { return Ok(()) };
    fs::create_dir(t.a.path("many"))?;
    for i in 0..200 {
        fs::write(t.a.path(&format!("many/f{i}")), format!("file {i}"))?;
    }
    // b has never seen these files: an `ls -l` lists the directory (with attributes, one bulk
    // status request) and then finds every stat answered already.
    let (statuses, bulk) = (t.b.rpcs("FetchStatus"), t.b.rpcs("ValidateAttrs"));
    let mut sizes = 0;
    for e in fs::read_dir(t.b.path("many"))? {
        let e = e?;
        sizes += fs::metadata(e.path())?.len();
    }
    assert_eq!(sizes, (0..200).map(|i| format!("file {i}").len() as u64).sum::<u64>());
    assert_eq!(t.b.rpcs("ValidateAttrs") - bulk, 1, "one bulk status request for the directory");
    assert!(t.b.rpcs("FetchStatus") - statuses <= 2, "no status request per file");
    Ok(())
}

#[test]
fn namespace_operations_behave_as_on_a_local_disk_and_are_seen_by_the_other_client() -> R {
    let Some(t) = two("ns.test")? else { return Ok(()) };
    let (a, b) = (&t.a, &t.b);
    fs::create_dir(a.path("dir"))?;
    fs::create_dir_all(a.path("dir/sub/deeper"))?;
    fs::write(a.path("dir/f"), b"f")?;
    fs::write(a.path("dir/g"), b"g")?;

    // rename a file, replacing a target
    fs::rename(a.path("dir/f"), a.path("dir/g"))?;
    assert_eq!(fs::read(b.path("dir/g"))?, b"f");
    assert!(!b.path("dir/f").exists());
    // rename a directory across directories
    fs::create_dir(a.path("other"))?;
    fs::rename(a.path("dir/sub"), a.path("other/moved"))?;
    assert!(b.path("other/moved/deeper").is_dir());
    assert!(!b.path("dir/sub").exists());
    // rename a directory over an empty one
    fs::create_dir(a.path("empty"))?;
    fs::rename(a.path("other/moved/deeper"), a.path("empty"))?;
    assert!(b.path("empty").is_dir());

    // rmdir of a non-empty directory
    let err = fs::remove_dir(a.path("other")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY), "{err}");
    fs::remove_dir(a.path("other/moved"))?;
    fs::remove_dir(a.path("other"))?;
    assert!(!b.path("other").exists());

    // unlink
    fs::remove_file(a.path("dir/g"))?;
    assert!(!b.path("dir/g").exists());
    assert_eq!(fs::remove_file(a.path("dir/g")).unwrap_err().raw_os_error(), Some(libc::ENOENT));

    // symlink
    fs::write(a.path("target.txt"), b"pointed at")?;
    std::os::unix::fs::symlink("target.txt", a.path("link"))?;
    assert_eq!(fs::read_link(b.path("link"))?.to_str(), Some("target.txt"));
    assert_eq!(fs::read(b.path("link"))?, b"pointed at");

    // hard link
    fs::hard_link(a.path("target.txt"), a.path("hard"))?;
    assert_eq!(fs::metadata(b.path("hard"))?.nlink(), 2);
    assert_eq!(fs::metadata(b.path("hard"))?.ino(), fs::metadata(b.path("target.txt"))?.ino());
    fs::remove_file(a.path("target.txt"))?;
    assert_eq!(fs::read(b.path("hard"))?, b"pointed at");

    // chmod
    fs::set_permissions(a.path("hard"), fs::Permissions::from_mode(0o600))?;
    assert_eq!(fs::metadata(b.path("hard"))?.permissions().mode() & 0o7777, 0o600);

    // truncate
    fs::write(a.path("trunc"), b"0123456789")?;
    fs::OpenOptions::new().write(true).open(a.path("trunc"))?.set_len(4)?;
    assert_eq!(fs::read(b.path("trunc"))?, b"0123");
    let f = fs::OpenOptions::new().write(true).open(a.path("trunc"))?;
    f.set_len(6)?;
    drop(f);
    assert_eq!(fs::read(b.path("trunc"))?, b"0123\0\0");

    // utimes
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options().write(true).open(a.path("trunc"))?.set_modified(when)?;
    assert_eq!(fs::metadata(b.path("trunc"))?.modified()?, when);

    // names the server must refuse
    let long = "x".repeat(256);
    assert!(fs::write(a.path(&long), b"").is_err());

    // the listings agree
    let list = |m: &VenusMount| -> anyhow::Result<Vec<String>> {
        let mut v: Vec<String> = fs::read_dir(m.path(""))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<anyhow::Result<_>>()?;
        v.sort();
        Ok(v)
    };
    assert_eq!(list(a)?, list(b)?);
    assert_eq!(list(a)?, vec!["dir", "empty", "hard", "link", "trunc"]);
    Ok(())
}

#[test]
fn a_new_volume_mounted_with_mkmount_is_reachable_from_both_clients() -> R {
    let Some(t) = two("mkmount.test")? else { return Ok(()) };
    let out = t.vice.vos(&["create", "proj"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mp = t.a.path("proj");
    let out = t.a.venus(&["mkmount", mp.to_str().unwrap_or_default(), "proj"]);
    assert!(out.status.success(), "mkmount: {}", String::from_utf8_lossy(&out.stderr));
    fs::write(t.a.path("proj/readme"), b"in another volume")?;
    assert_eq!(fs::read(t.b.path("proj/readme"))?, b"in another volume");
    let ls = t.b.venus(&["lsmount", t.b.path("proj").to_str().unwrap_or_default()]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("#proj"), "{}", String::from_utf8_lossy(&ls.stdout));
    let where_root =
        String::from_utf8_lossy(&t.b.venus(&["whereis", t.b.path("").to_str().unwrap_or_default()]).stdout).to_string();
    let where_proj =
        String::from_utf8_lossy(&t.b.venus(&["whereis", t.b.path("proj/readme").to_str().unwrap_or_default()]).stdout)
            .to_string();
    assert_ne!(where_root, where_proj, "the mount point leads to another volume");
    // Renames across the volume boundary are refused as on any file system.
    let err = fs::rename(t.a.path("proj/readme"), t.a.path("readme")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
    let out = t.a.venus(&["rmmount", mp.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "rmmount: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!t.b.path("proj").exists());
    Ok(())
}

#[test]
fn restarts_of_venus_and_vice_are_survived() -> R {
    let Some(mut t) = two("restart.test")? else { return Ok(()) };
    let content = Noise::bytes(11, 200_000);
    fs::write(t.a.path("keep.bin"), &content)?;
    assert_eq!(fs::read(t.b.path("keep.bin"))?, content);
    let fetches_before = t.b.rpcs("FetchData");
    assert!(fetches_before >= 1);

    // venus restarts: what it cached is used again (counters start from zero). The first time,
    // venus revalidates its cached objects and establishes the volume's stamp...
    t.b.restart()?;
    t.b.wait_counter("volumes_validated", 1)?;
    assert_eq!(fs::read(t.b.path("keep.bin"))?, content);
    assert_eq!(t.b.rpcs("FetchData"), 0, "the cached file was served without FetchData after a restart");
    // ...so the next restart costs one volume-stamp check and nothing per file.
    t.b.restart()?;
    t.b.wait_counter("volumes_validated", 1)?;
    assert_eq!(fs::read(t.b.path("keep.bin"))?, content);
    assert_eq!(t.b.rpcs("ValidateVolumes"), 1);
    assert_eq!(t.b.rpcs("FetchStatus"), 0, "no per-file revalidation");
    assert_eq!(t.b.rpcs("FetchData"), 0);

    // vice restarts (killed): its promises are gone with it. Each client notices within a
    // keep-alive (the new process resets the old connections) and stops trusting them.
    t.vice.restart()?;
    t.a.wait_counter("connections_lost", 1)?;
    t.b.wait_counter("connections_lost", 1)?;
    fs::write(t.a.path("after.txt"), b"after the restart")?;
    assert_eq!(fs::read(t.b.path("after.txt"))?, b"after the restart");
    assert_eq!(fs::read(t.b.path("keep.bin"))?, content);
    Ok(())
}

#[test]
fn many_small_writes_and_a_one_gib_file_round_trip() -> R {
    let Some(t) = two("bulk.test")? else { return Ok(()) };
    // Many small writes through one descriptor.
    let mut f = fs::File::create(t.a.path("small-writes"))?;
    let mut expected = Vec::new();
    for i in 0..20_000u32 {
        let line = format!("line {i}\n");
        f.write_all(line.as_bytes())?;
        expected.extend_from_slice(line.as_bytes());
    }
    f.seek(SeekFrom::Start(0))?;
    f.write_all(b"LINE")?;
    expected[..4].copy_from_slice(b"LINE");
    drop(f);
    assert_eq!(blake3::hash(&fs::read(t.b.path("small-writes"))?), blake3::hash(&expected));

    // 1 GiB, written in 1 MiB blocks.
    let (stored, asked, put) = (t.a.counter("bytes_stored"), t.a.rpcs("MissingChunks"), t.a.rpcs("PutChunks"));
    let mut f = fs::File::create(t.a.path("big"))?;
    let mut noise = Noise::new(99);
    let mut block = vec![0u8; 1 << 20];
    let mut h = blake3::Hasher::new();
    for _ in 0..1024 {
        noise.fill(&mut block);
        h.update(&block);
        f.write_all(&block)?;
    }
    f.sync_all()?;
    drop(f);
    let expected = h.finalize();
    // Cut and sent in batches while cutting: every byte sent once, each batch asked about once
    // and sent in one request (about 4,000 chunks: many batches).
    assert_eq!(t.a.counter("bytes_stored") - stored, 1 << 30);
    let (asked, put) = (t.a.rpcs("MissingChunks") - asked, t.a.rpcs("PutChunks") - put);
    assert!(asked > 4 && asked == put, "{asked} MissingChunks, {put} PutChunks");
    assert_eq!(hash_file(&t.b.path("big"))?, expected);
    assert_eq!(fs::metadata(t.b.path("big"))?.len(), 1 << 30);
    Ok(())
}

#[test]
fn status_flush_and_fid_answer_through_the_control_socket() -> R {
    let Some(t) = two("control.test")? else { return Ok(()) };
    fs::write(t.a.path("x"), b"x")?;
    let st = t.a.status();
    assert_eq!(st["cells"][0]["name"], "control.test");
    assert_eq!(st["cells"][0]["servers"][0]["connected"], true);
    assert!(st["counters"]["rpcs"]["Create"].as_u64() >= Some(1));
    // Written through, a small file is stored with its data in one request; if the volume's
    // write-back permit came first, the file went in a batch of the log instead.
    let c = &st["counters"];
    let with_data = c["rpcs"]["PutChunksAndMutate"].as_u64() >= Some(1);
    let written_back = c["permits_granted"].as_u64() >= Some(1) && c["records_reintegrated"].as_u64() >= Some(1);
    assert!(with_data || written_back, "a small file is stored with its data: {st}");
    let fid = t.a.venus(&["fid", t.a.path("x").to_str().unwrap_or_default()]);
    assert!(String::from_utf8_lossy(&fid.stdout).contains("is fid"), "{fid:?}");
    let human = t.a.venus(&["status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("cache:"));
    // flush drops the container; the next read fetches again.
    fs::read(t.b.path("x"))?;
    let before = t.b.rpcs("FetchData");
    let out = t.b.venus(&["flush", t.b.path("x").to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(t.b.path("x"))?, b"x");
    assert_eq!(t.b.rpcs("FetchData"), before + 1);
    // A path outside any mount is a clear error.
    let out = t.a.venus(&["fid", "/tmp"]);
    assert!(!out.status.success());
    Ok(())
}

/// Regression: every fork copies open descriptors and every exec closes the copies, so one open
/// file gets many concurrent FLUSHes. They must not store from a stale base (a conflict) or lose
/// the final contents.
#[test]
fn forks_while_a_file_is_open_cause_no_conflict_and_lose_nothing() -> R {
    let Some(t) = two("fork.test")? else { return Ok(()) };
    let mut f = fs::File::create(t.a.path("busy"))?;
    let mut expected = Vec::new();
    for round in 0..20u8 {
        let chunk = vec![round; 50_000];
        f.write_all(&chunk)?;
        expected.extend_from_slice(&chunk);
        // Children inherit (a copy of) the descriptor and close it at exec: FLUSH, concurrently.
        let children: Vec<_> = (0..4).map(|_| std::process::Command::new("true").spawn()).collect::<Result<_, _>>()?;
        for mut c in children {
            c.wait()?;
        }
    }
    f.sync_all()?;
    drop(f);
    assert_eq!(blake3::hash(&fs::read(t.b.path("busy"))?), blake3::hash(&expected));
    assert!(!t.a.log_text().contains("conflict"), "{}", t.a.log_text());
    Ok(())
}

#[test]
fn background_mount_and_the_unmount_command() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("bg.test")?;
    let dir = tempfile::tempdir()?;
    let mp = dir.path().join("afs");
    fs::create_dir(&mp)?;
    let out = std::process::Command::new(bin("venus"))
        .args(["mount", "--background", "--cell-file"])
        .arg(vice.cell_file_path())
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .arg(&mp)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("venus mounted"));
    // root.cell is writable by its administrators: log in as the first one.
    let out = std::process::Command::new(bin("venus"))
        .args(["login", "admin", "--password-file"])
        .arg(vice.data().join("admin.password"))
        .env("VENUS_CACHE", dir.path().join("cache"))
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::write(mp.join("bg.test/x"), b"in the background")?;
    assert_eq!(fs::read(mp.join("bg.test/x"))?, b"in the background");
    let out = std::process::Command::new(bin("venus")).arg("unmount").arg(&mp).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    assert!(!mounts.contains(&format!(" {} ", mp.display())), "still mounted after venus unmount");
    // The detached venus exits once unmounted: its control socket goes away.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dir.path().join("cache/venus.sock").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!dir.path().join("cache/venus.sock").exists(), "venus did not exit after unmount");
    Ok(())
}

#[test]
fn the_cache_limit_evicts_old_files_and_refuses_files_larger_than_the_cache() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("limit.test")?;
    let a = VenusMount::start(&vice, "limit.test")?;
    let b = VenusMount::start_with(&vice, "limit.test", &["--cache-size", "1M"])?;
    for i in 0..5u64 {
        fs::write(a.path(&format!("f{i}")), Noise::bytes(i, 300_000))?;
    }
    fs::write(a.path("huge"), Noise::bytes(9, 2_000_000))?;
    for i in 0..5u64 {
        assert_eq!(fs::read(b.path(&format!("f{i}")))?, Noise::bytes(i, 300_000));
    }
    let st = b.status();
    assert!(st["cache"]["used"].as_u64() <= Some(1 << 20), "{}", st["cache"]);
    assert!(st["counters"]["evictions"].as_u64() >= Some(2), "{}", st["counters"]);
    let err = fs::read(b.path("huge")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    // An evicted file is fetched again when needed.
    assert_eq!(fs::read(b.path("f0"))?, Noise::bytes(0, 300_000));
    Ok(())
}

#[test]
fn cached_objects_of_a_changed_volume_are_revalidated_in_batches_not_one_by_one() -> R {
    let Some(mut t) = two("batch.test")? else { return Ok(()) };
    assert!(t.vice.vos(&["create", "second"]).status.success());
    t.a.venus_ok(&["mkmount", &t.a.path("second").display().to_string(), "second"]);
    fs::create_dir(t.a.path("many"))?;
    for i in 0..400 {
        fs::write(t.a.path(&format!("many/f{i}")), format!("file {i}"))?;
    }
    for i in 0..100 {
        fs::write(t.a.path(&format!("second/g{i}")), format!("second {i}"))?;
    }
    for i in 0..400 {
        fs::read(t.b.path(&format!("many/f{i}")))?;
    }
    for i in 0..100 {
        fs::read(t.b.path(&format!("second/g{i}")))?;
    }
    // b goes away and misses changes in both volumes: its stamps no longer hold.
    t.b.stop()?;
    fs::write(t.a.path("many/f7"), b"changed while b was away")?;
    fs::write(t.a.path("second/g3"), b"changed too")?;
    t.b.restart_stopped()?;
    t.b.wait_counter("volumes_validated", 2)?;
    assert_eq!(t.b.rpcs("ValidateAttrs"), 1, "500 objects in two volumes, one request");
    // Learn the stamps and confirm them; the server may also say b lost its promises (it could
    // not be told of the changes), which costs the refused request and one more check.
    assert!(t.b.rpcs("ValidateVolumes") <= 4, "{}", t.b.rpcs("ValidateVolumes"));
    assert_eq!(t.b.rpcs("FetchStatus"), 0, "no per-object revalidation");
    for i in 0..400 {
        let want = if i == 7 { "changed while b was away".to_string() } else { format!("file {i}") };
        assert_eq!(fs::read_to_string(t.b.path(&format!("many/f{i}")))?, want);
    }
    assert_eq!(fs::read_to_string(t.b.path("second/g3"))?, "changed too");
    assert_eq!(t.b.rpcs("FetchData"), 2, "only the changed files are fetched again");
    assert_eq!(t.b.rpcs("FetchStatus"), 0);
    Ok(())
}

#[test]
fn a_small_new_file_costs_two_requests_create_and_store_with_its_data() -> R {
    let Some(t) = two_sync("small.test")? else { return Ok(()) };
    let before = |name: &str| t.a.rpcs(name);
    let names = ["Create", "MissingChunks", "PutChunks", "Store", "PutChunksAndMutate"];
    let at: Vec<u64> = names.iter().map(|n| before(n)).collect();
    for i in 0..20 {
        fs::write(t.a.path(&format!("s{i}.c")), format!("int main{i}() {{ return {i}; }}\n"))?;
    }
    let made: Vec<u64> = names.iter().zip(&at).map(|(n, a)| t.a.rpcs(n) - a).collect();
    // Create, then the data and the Store in one request: nothing asked first, nothing apart.
    assert_eq!(made, vec![20, 0, 0, 0, 20], "{names:?}");
    assert_eq!(fs::read_to_string(t.b.path("s7.c"))?, "int main7() { return 7; }\n");
    Ok(())
}

#[test]
fn touching_a_file_new_or_old_keeps_its_contents_and_sets_its_time() -> R {
    let Some(t) = two("touch.test")? else { return Ok(()) };
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    // As touch(1) does: create, set the times through the open descriptor, close.
    let f = fs::File::create(t.a.path("new"))?;
    f.set_modified(when)?;
    drop(f);
    fs::write(t.a.path("old"), b"contents")?;
    let f = fs::OpenOptions::new().write(true).open(t.a.path("old"))?;
    f.set_modified(when)?;
    drop(f);
    // The cached copy survived its own attribute change: read from the cache, not fetched.
    let fetched = t.a.rpcs("FetchData");
    assert_eq!(fs::read(t.a.path("old"))?, b"contents");
    assert_eq!(t.a.rpcs("FetchData"), fetched);
    for name in ["new", "old"] {
        assert_eq!(fs::metadata(t.b.path(name))?.modified()?, when, "{name}");
    }
    assert_eq!(fs::read(t.b.path("old"))?, b"contents");
    assert_eq!(fs::read(t.b.path("new"))?, b"");
    Ok(())
}

#[test]
fn removed_files_lend_their_containers_to_new_ones_but_an_open_one_keeps_its_contents() -> R {
    // Without write-back: under a permit a removed file's container waits for the log to be
    // sent (the records before the removal may need it) and is lent only then.
    let Some(t) = two_sync("recycle.test")? else { return Ok(()) };
    let cache = |m: &VenusMount, what: &str| m.status()["cache"][what].as_u64().unwrap_or(0);
    let old = |i: u64| Noise::bytes(i, 1000 + i as usize * 100);
    for i in 0..20 {
        fs::write(t.a.path(&format!("f{i}")), old(i))?;
    }
    let mut held = fs::File::open(t.a.path("f0"))?;
    // The kernel releases closed files asynchronously: wait until only `held` is open.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cache(&t.a, "files_open") != 1 {
        assert!(std::time::Instant::now() < deadline, "files still open: {}", t.a.status()["cache"]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let free_before = cache(&t.a, "free_containers");
    for i in 0..20 {
        fs::remove_file(t.a.path(&format!("f{i}")))?;
    }
    assert_eq!(cache(&t.a, "free_containers"), free_before + 19, "every closed container kept for reuse");
    let mut s = Vec::new();
    held.read_to_end(&mut s)?;
    assert_eq!(s, old(0), "a removed file still open reads what it held");
    drop(held);
    // New files, shorter than the old ones: a reused container starts empty.
    let new = |i: u64| Noise::bytes(100 + i, 500);
    for i in 0..20 {
        fs::write(t.a.path(&format!("g{i}")), new(i))?;
    }
    assert_eq!(cache(&t.a, "free_containers"), (free_before + 19).saturating_sub(20));
    for i in 0..20 {
        assert_eq!(fs::read(t.a.path(&format!("g{i}")))?, new(i), "g{i} here");
        assert_eq!(fs::read(t.b.path(&format!("g{i}")))?, new(i), "g{i} on the other client");
    }
    Ok(())
}

#[test]
fn a_removed_file_still_mapped_keeps_its_contents_and_its_container_is_not_reused() -> R {
    let Some(t) = two("mapped.test")? else { return Ok(()) };
    let cache = |what: &str| t.a.status()["cache"][what].as_u64().unwrap_or(0);
    let contents = Noise::bytes(1, 100_000);
    fs::write(t.a.path("lib.so"), &contents)?;
    // As the loader does: map, then close. With passthrough the mapping holds the container.
    let f = fs::File::open(t.a.path("lib.so"))?;
    // SAFETY: a read-only shared mapping of an open file, unmapped below.
    let map = unsafe {
        use std::os::fd::AsRawFd;
        libc::mmap(std::ptr::null_mut(), contents.len(), libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0)
    };
    assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
    drop(f);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cache("files_open") != 0 {
        assert!(std::time::Instant::now() < deadline, "still open: {}", t.a.status()["cache"]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let free = cache("free_containers");
    fs::remove_file(t.a.path("lib.so"))?;
    assert_eq!(cache("free_containers"), free, "a mapped container is deleted, not kept for reuse");
    // New files take whatever is free; none of them may be the mapped container.
    for i in 0..5 {
        fs::write(t.a.path(&format!("new{i}")), Noise::bytes(10 + i, 50_000))?;
    }
    // SAFETY: the mapping is `contents.len()` bytes long and still mapped.
    let seen = unsafe { std::slice::from_raw_parts(map as *const u8, contents.len()) }.to_vec();
    // SAFETY: unmapping what was mapped above.
    unsafe { libc::munmap(map, contents.len()) };
    assert!(seen == contents, "the mapping changed under its reader");
    Ok(())
}

/// A big file opens before it is whole: `open` returns once its first bytes are in, a second
/// open joins the same fetch, and a read further on waits for its bytes. Cutting the network
/// mid-fetch fails only the reads of what never came (what came stays readable); once the
/// server is back the next open fetches it again, whole and right, and after that it is an
/// ordinary cached file.
#[test]
fn a_big_file_opens_before_it_is_whole_and_a_cut_fails_only_reads_of_what_never_came() -> R {
    const MIB: usize = 1 << 20;
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("stream.test")?;
    let proxy = UdpProxy::start(&vice.addr)?;
    let cell_dir = tempfile::tempdir()?;
    let cell_file = proxy.cell_file(&vice, cell_dir.path())?;
    let a =
        VenusMount::start_with_cell_file(&cell_file, "stream.test", &["--stream-threshold", "1M", "--timeout", "3"])?;
    let b = VenusMount::start(&vice, "stream.test")?;
    let watched = [Watched::vice(&vice), Watched::venus(&a), Watched::venus(&b)];
    with_watchdog(Duration::from_secs(120), &watched, move || -> R {
        let data = Noise::bytes(21, 32 * MIB);
        fs::write(b.path("big"), &data)?;
        assert_eq!(fs::metadata(a.path("big"))?.len(), data.len() as u64);
        let fetches = a.rpcs("FetchData");

        // A few hundred packets from a, then nothing gets through: a fraction of the file.
        proxy.cut_after(200);
        let mut first = fs::File::open(a.path("big"))?;
        let mut head = vec![0u8; 64 << 10];
        first.read_exact(&mut head)?;
        assert!(head == data[..head.len()], "the first bytes, read while the rest is coming");
        let mut second = fs::File::open(a.path("big"))?;
        assert_eq!(a.counter("streamed_opens"), 2, "both opens returned before the file was whole");
        assert_eq!(a.rpcs("FetchData"), fetches + 1, "the second open joined the first's fetch");

        // The end never comes: the read waits for it until the server is given up on.
        first.seek(SeekFrom::Start(30 * MIB as u64))?;
        let err = first.read(&mut head).expect_err("bytes that never arrived cannot be read");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert!(a.counter("stream_waits") >= 1);
        second.read_exact(&mut head)?;
        assert!(head == data[..head.len()], "what arrived stays readable");
        drop((first, second));

        proxy.cut(false);
        a.wait_connected()?;
        assert_eq!(hash_file(&a.path("big"))?, blake3::hash(&data), "fetched again, whole and right");
        assert_eq!(a.rpcs("FetchData"), fetches + 2);
        // Now it is cached: opened as any cached file, not streamed.
        let streamed = a.counter("streamed_opens");
        assert_eq!(hash_file(&a.path("big"))?, blake3::hash(&data));
        assert_eq!(a.counter("streamed_opens"), streamed);
        assert_eq!(a.rpcs("FetchData"), fetches + 2);
        Ok(())
    })
}
