//! Every kind of conflict that reintegration can meet ends with both versions kept and listed,
//! and is then repaired with `venus repair`.

use std::fs;
use std::path::PathBuf;

use e2e::*;

type R = anyhow::Result<()>;

fn names(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut v: Vec<String> =
        fs::read_dir(dir)?.map(|e| Ok(e?.file_name().to_string_lossy().into_owned())).collect::<anyhow::Result<_>>()?;
    v.sort();
    Ok(v)
}

/// The single entry of `dir` whose name starts with `prefix.conflict-`.
fn copy_of(dir: &std::path::Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let found: Vec<String> =
        names(dir)?.into_iter().filter(|n| n.starts_with(&format!("{prefix}.conflict-"))).collect();
    anyhow::ensure!(found.len() == 1, "expected one conflict copy of {prefix} in {}, found {found:?}", dir.display());
    Ok(dir.join(&found[0]))
}

#[test]
fn every_conflict_keeps_both_versions_is_listed_and_can_be_repaired() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let vice = Vice::start("conflict.test")?;
    let a = VenusMount::start(&vice, "conflict.test")?;
    let b = VenusMount::start(&vice, "conflict.test")?;
    for f in ["both-edit", "edit-vs-remove", "remove-vs-edit"] {
        fs::write(a.path(f), b"original")?;
    }
    fs::create_dir(a.path("rmdir-vs-new"))?;
    fs::create_dir(a.path("create-in-removed"))?;
    for f in ["both-edit", "edit-vs-remove", "remove-vs-edit"] {
        fs::read(a.path(f))?;
        fs::read(b.path(f))?;
    }
    names(&a.path("rmdir-vs-new"))?;
    names(&a.path("create-in-removed"))?;

    a.venus_ok(&["disconnect"]);
    // A, offline:
    fs::write(a.path("both-edit"), b"A's edit")?;
    fs::write(a.path("edit-vs-remove"), b"A's edit of a file B removes")?;
    fs::remove_file(a.path("remove-vs-edit"))?;
    fs::write(a.path("same-name"), b"A's new file")?;
    fs::remove_dir(a.path("rmdir-vs-new"))?;
    fs::write(a.path("create-in-removed/y"), b"A's file in a directory B removes")?;
    assert_eq!(xattr(&a.path("both-edit"), "user.afs.state").as_deref(), Some("pending"));
    // B, connected, meanwhile:
    fs::write(b.path("both-edit"), b"B's edit")?;
    fs::remove_file(b.path("edit-vs-remove"))?;
    fs::write(b.path("remove-vs-edit"), b"B's edit of a file A removes")?;
    fs::write(b.path("same-name"), b"B's new file")?;
    fs::write(b.path("rmdir-vs-new/x"), b"B's new entry")?;
    fs::remove_dir(b.path("create-in-removed"))?;

    a.venus_ok(&["reconnect"]);
    a.venus_ok(&["sync"]);

    // Both versions of everything are there.
    assert_eq!(fs::read(b.path("both-edit"))?, b"B's edit");
    assert_eq!(fs::read(copy_of(&b.path(""), "both-edit")?)?, b"A's edit");
    assert_eq!(fs::read(copy_of(&b.path(""), "edit-vs-remove")?)?, b"A's edit of a file B removes");
    assert_eq!(fs::read(b.path("remove-vs-edit"))?, b"B's edit of a file A removes");
    assert_eq!(fs::read(b.path("same-name"))?, b"B's new file");
    assert_eq!(fs::read(copy_of(&b.path(""), "same-name")?)?, b"A's new file");
    assert_eq!(fs::read(b.path("rmdir-vs-new/x"))?, b"B's new entry");
    assert_eq!(fs::read(copy_of(&b.path(".conflicts"), "y")?)?, b"A's file in a directory B removes");

    // And listed, each with its kind.
    let listed = a.venus_ok(&["conflicts", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&listed)?;
    let mut kinds: Vec<String> =
        list.as_array().into_iter().flatten().filter_map(|c| c["kind"].as_str().map(str::to_string)).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["directory gone", "name taken", "remove/update", "rmdir/new entries", "update/remove", "update/update"],
        "{listed}"
    );
    assert_eq!(xattr(&copy_of(&a.path(""), "both-edit")?, "user.afs.state").as_deref(), Some("conflict"));

    // Repairs.
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    a.venus_ok(&["repair", &path(a.path("both-edit")), "--keep", "local"]);
    assert_eq!(fs::read(b.path("both-edit"))?, b"A's edit");
    assert!(!names(&b.path(""))?.iter().any(|n| n.starts_with("both-edit.conflict-")));

    a.venus_ok(&["repair", &path(copy_of(&a.path(""), "edit-vs-remove")?), "--keep", "server"]);
    assert!(!names(&b.path(""))?.iter().any(|n| n.starts_with("edit-vs-remove")));

    a.venus_ok(&["repair", &path(a.path("same-name")), "--keep", "both"]);
    assert!(b.path("same-name").exists() && copy_of(&b.path(""), "same-name").is_ok());

    a.venus_ok(&["repair", &path(a.path("remove-vs-edit")), "--keep", "local"]);
    assert!(!b.path("remove-vs-edit").exists());

    a.venus_ok(&["repair", &path(a.path("rmdir-vs-new")), "--keep", "server"]);
    assert!(b.path("rmdir-vs-new/x").exists());

    a.venus_ok(&["repair", &path(copy_of(&a.path(".conflicts"), "y")?), "--keep", "both"]);

    let left = a.venus_ok(&["conflicts"]);
    assert!(left.contains("0 conflicts"), "{left}");
    Ok(())
}
