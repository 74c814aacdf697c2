//! End-to-end tests of hoarding: profiles, walks, priorities, and working offline from the hoard.

use std::fs;
use std::path::Path;

use e2e::*;

type R = anyhow::Result<()>;

fn hoard_mount(vice: &Vice, cell: &str, hoard_dir: &Path, extra: &[&str]) -> anyhow::Result<VenusMount> {
    let mut args = vec!["--hoard-dir", hoard_dir.to_str().unwrap_or_default(), "--timeout", "4"];
    args.extend_from_slice(extra);
    VenusMount::start_with(vice, cell, &args)
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_hoarded_tree_of_500_files_is_all_there_offline() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let mut vice = Vice::start("hoard.test")?;
    let profiles = tempfile::tempdir()?;
    let writer = VenusMount::start(&vice, "hoard.test")?;
    for d in 0..20 {
        fs::create_dir_all(writer.path(&format!("proj/d{d:02}")))?;
        for f in 0..25 {
            fs::write(writer.path(&format!("proj/d{d:02}/f{f:02}")), format!("file {d}/{f}"))?;
        }
    }
    fs::create_dir(writer.path("elsewhere"))?;
    fs::write(writer.path("elsewhere/not-hoarded"), b"never opened")?;
    let laptop = hoard_mount(&vice, "hoard.test", profiles.path(), &[])?;
    fs::write(
        profiles.path().join("work.hoard"),
        format!("# my project\na {} 100:d\n", laptop.path("proj").display()),
    )?;
    let walk = ok(laptop.hoard(&["walk"]));
    assert!(walk.contains("0 missing"), "{walk}");
    assert!(ok(laptop.hoard(&["verify"])).contains("0 missing"));
    // A real disconnection: the server goes away.
    vice.kill9();
    for d in 0..20 {
        for f in 0..25 {
            assert_eq!(fs::read(laptop.path(&format!("proj/d{d:02}/f{f:02}")))?, format!("file {d}/{f}").as_bytes());
        }
    }
    let verify = laptop.hoard(&["verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", String::from_utf8_lossy(&verify.stdout));
    // What was neither hoarded nor opened is a miss, counted.
    let err = fs::read(laptop.path("elsewhere/not-hoarded")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(laptop.counter("disconnected_misses") >= 1);
    Ok(())
}

#[test]
fn profile_edits_take_effect_without_a_restart_and_bad_profiles_change_nothing() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("edit.test")?;
    let profiles = tempfile::tempdir()?;
    let a = hoard_mount(&vice, "edit.test", profiles.path(), &[])?;
    let b = VenusMount::start(&vice, "edit.test")?;
    for dir in ["one", "two"] {
        fs::create_dir(b.path(dir))?;
        fs::write(b.path(&format!("{dir}/file")), dir)?;
    }
    let profile = profiles.path().join("p.hoard");
    fs::write(&profile, format!("a {} c\n", a.path("one").display()))?;
    ok(a.hoard(&["walk"]));
    // Edited by an editor: written to a temporary file and renamed over the profile.
    let tmp = profiles.path().join(".p.hoard.swp");
    fs::write(&tmp, format!("a {} c\n", a.path("two").display()))?;
    fs::rename(&tmp, &profile)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok(a.hoard(&["list"])).contains("/two") {
        assert!(std::time::Instant::now() < deadline, "the edit was not picked up");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ok(a.hoard(&["walk"]));
    a.venus_ok(&["disconnect"]);
    assert_eq!(fs::read(a.path("two/file"))?, b"two");
    a.venus_ok(&["reconnect"]);
    // A broken profile is refused with its file and line; the hoard in force stays.
    fs::write(profiles.path().join("broken.hoard"), "a /x 10\nz nonsense\n")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = a.hoard(&["list"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("NOT loaded") {
            assert!(text.contains("broken.hoard:2"), "{text}");
            assert_eq!(out.status.code(), Some(1));
            assert!(text.contains("/two"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the broken profile was not noticed: {text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn future_entries_pick_up_files_others_create() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("future.test")?;
    let profiles = tempfile::tempdir()?;
    let a = hoard_mount(&vice, "future.test", profiles.path(), &[])?;
    let b = VenusMount::start(&vice, "future.test")?;
    fs::create_dir_all(b.path("shared/deep"))?;
    fs::create_dir_all(b.path("fixed"))?;
    fs::write(b.path("shared/old"), b"old")?;
    fs::write(b.path("fixed/old"), b"old")?;
    let shared = a.path("shared");
    let fixed = a.path("fixed");
    ok(a.hoard(&["add", shared.to_str().unwrap_or_default(), "--descendants", "--future"]));
    ok(a.hoard(&["add", fixed.to_str().unwrap_or_default(), "--descendants"]));
    ok(a.hoard(&["walk"]));
    fs::write(b.path("shared/deep/new"), b"created by B after the walk")?;
    fs::write(b.path("fixed/new"), b"also new")?;
    ok(a.hoard(&["walk"]));
    a.venus_ok(&["disconnect"]);
    assert_eq!(fs::read(a.path("shared/deep/new"))?, b"created by B after the walk");
    assert_eq!(fs::read(a.path("fixed/old"))?, b"old");
    // Without --future the entry keeps the tree it had at its first walk.
    assert!(fs::read(a.path("fixed/new")).is_err());
    Ok(())
}

#[test]
fn when_the_hoard_does_not_fit_higher_priorities_win_and_verify_says_why() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("fit.test")?;
    let profiles = tempfile::tempdir()?;
    let b = VenusMount::start(&vice, "fit.test")?;
    for dir in ["important", "minor", "unrelated"] {
        fs::create_dir(b.path(dir))?;
        for i in 0..3u64 {
            fs::write(b.path(&format!("{dir}/f{i}")), Noise::bytes(i + dir.len() as u64, 300_000))?;
        }
    }
    let a = hoard_mount(&vice, "fit.test", profiles.path(), &["--cache-size", "1M"])?;
    fs::write(
        profiles.path().join("p.hoard"),
        format!("a {} 500:c\na {} 10:c\n", a.path("important").display(), a.path("minor").display()),
    )?;
    let walk = a.hoard(&["walk"]);
    assert_eq!(walk.status.code(), Some(1), "the hoard does not fit: {}", String::from_utf8_lossy(&walk.stdout));
    let verify = a.hoard(&["verify", "--json"]);
    assert_eq!(verify.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout)?;
    let missing: Vec<String> =
        report["missing"].as_array().into_iter().flatten().filter_map(|m| m[0].as_str().map(str::to_string)).collect();
    assert!(
        !missing.is_empty() && missing.iter().all(|p| p.contains("/minor/")),
        "only low priorities are left out: {missing:?}"
    );
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("does not fit"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // Reading unrelated files does not push hoarded files out.
    for i in 0..3 {
        let _ = fs::read(a.path(&format!("unrelated/f{i}")));
    }
    let after: serde_json::Value = serde_json::from_slice(&a.hoard(&["verify", "--json"]).stdout)?;
    let still: Vec<String> =
        after["missing"].as_array().into_iter().flatten().filter_map(|m| m[0].as_str().map(str::to_string)).collect();
    assert!(still.iter().all(|p| !p.contains("/important/")), "hoarded files were evicted: {still:?}");
    Ok(())
}

#[test]
fn hoarding_crosses_mount_points_and_follows_symlinks() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("cross.test")?;
    let profiles = tempfile::tempdir()?;
    let b = VenusMount::start(&vice, "cross.test")?;
    assert!(vice.vos(&["create", "sub"]).status.success());
    fs::create_dir(b.path("home"))?;
    let mp = b.path("home/sub");
    assert!(b.venus(&["mkmount", mp.to_str().unwrap_or_default(), "sub"]).status.success());
    fs::write(b.path("home/sub/in-another-volume"), b"mounted sub-volume")?;
    fs::create_dir(b.path("elsewhere"))?;
    fs::write(b.path("elsewhere/target"), b"reached through a symlink")?;
    std::os::unix::fs::symlink("../elsewhere", b.path("home/link"))?;
    let a = hoard_mount(&vice, "cross.test", profiles.path(), &[])?;
    fs::write(
        profiles.path().join("p.hoard"),
        format!("a {} 100:d\na {} 50\n", a.path("home").display(), a.path("home/link/target").display()),
    )?;
    let walk = ok(a.hoard(&["walk"]));
    assert!(walk.contains("0 missing"), "{walk}");
    a.venus_ok(&["disconnect"]);
    assert_eq!(fs::read(a.path("home/sub/in-another-volume"))?, b"mounted sub-volume");
    assert_eq!(fs::read(a.path("home/link/target"))?, b"reached through a symlink");
    Ok(())
}
