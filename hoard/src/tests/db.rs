//! The database: applying commands all or nothing, loading several files, priorities.

use super::entry;
use crate::Depth::{Children, Descendants, Entry};
use crate::{Command, HoardDb, ProfileErrorKind, load_profiles, parse_lines};

fn db(text: &str) -> HoardDb {
    let mut db = HoardDb::new();
    db.apply("t", &parse_lines(text, "t").unwrap()).unwrap();
    db
}

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(l, t)| (l.to_string(), t.to_string())).collect()
}

#[test]
fn add_replaces_the_entry_for_the_same_path() {
    let db = db("a /afs/x 5\na /afs/y c\na /afs/x/ 50:d+");
    let entries: Vec<_> = db.entries().cloned().collect();
    assert_eq!(entries, vec![entry("/afs/x", 50, Descendants, true), entry("/afs/y", 10, Children, false)]);
    assert_eq!(db.len(), 2);
    assert_eq!(db.get("/afs/y"), Some(&entry("/afs/y", 10, Children, false)));
}

#[test]
fn delete_clear_and_list_apply_in_order() {
    assert_eq!(db("a /a\na /b\nd /a\nl").entries().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["/b"]);
    assert!(db("a /a\na /b\nc").is_empty());
    assert_eq!(db("a /a\nc\na /c 7").entries().cloned().collect::<Vec<_>>(), [entry("/c", 7, Entry, false)]);
    // A deletion after a re-add.
    assert!(db("a /a\nd /a\na /a\nd /a").is_empty());
}

#[test]
fn entries_come_sorted_by_path() {
    let db = db("a /z\na /a/b\na /a\na /m 1000");
    let paths: Vec<_> = db.entries().map(|e| e.path.clone()).collect();
    assert_eq!(paths, ["/a", "/a/b", "/m", "/z"]);
}

#[test]
fn delete_of_a_missing_path_fails_the_batch_with_its_line() {
    let mut db = db("a /keep 5");
    let before = db.clone();
    let commands = parse_lines("a /new\nc\n\n# gone\nd /keep", "home.hoard").unwrap();
    let e = db.apply("home.hoard", &commands).unwrap_err();
    assert_eq!(e.line, Some(5));
    assert_eq!(e.kind, ProfileErrorKind::NoSuchEntry("/keep".into()));
    assert_eq!(e.to_string(), r#"home.hoard:5: no entry for "/keep" to delete"#);
    assert_eq!(db, before, "nothing of a failed batch is applied");
}

#[test]
fn remove_and_clear() {
    let mut db = db("a /a\na /b");
    assert!(db.remove("/a"));
    assert!(!db.remove("/a"));
    db.clear();
    assert!(db.is_empty());
    assert!(!db.remove("/b"));
}

#[test]
fn load_profiles_merges_files_in_order() {
    let db = load_profiles(&files(&[
        ("10-base.hoard", "a /afs/a 5\na /afs/b d+"),
        ("20-more.hoard", "a /afs/a 100\nd /afs/b\na /afs/c c"),
    ]))
    .unwrap();
    let entries: Vec<_> = db.entries().cloned().collect();
    assert_eq!(entries, [entry("/afs/a", 100, Entry, false), entry("/afs/c", 10, Children, false)]);
    assert_eq!(load_profiles(&[]).unwrap(), HoardDb::new());
}

#[test]
fn load_profiles_fails_whole_at_the_first_error() {
    let e = load_profiles(&files(&[("a.hoard", "a /x"), ("b.hoard", "a /y\na /z 0"), ("c.hoard", "bad")])).unwrap_err();
    assert_eq!((e.label.as_str(), e.line), ("b.hoard", Some(2)));
    assert!(e.to_string().starts_with("b.hoard:2: bad priority"), "{e}");
    // A `d` may only delete what earlier files (or lines) added.
    let e = load_profiles(&files(&[("a.hoard", "d /x"), ("b.hoard", "a /x")])).unwrap_err();
    assert_eq!((e.label.as_str(), e.line, e.kind), ("a.hoard", Some(1), ProfileErrorKind::NoSuchEntry("/x".into())));
}

#[test]
fn priority_of_an_entry_reaches_the_path_only() {
    let db = db("a /afs/x 50");
    assert_eq!(db.priority_of("/afs/x"), Some(50));
    assert_eq!(db.priority_of("/afs/x/child"), None);
    assert_eq!(db.priority_of("/afs"), None);
    assert_eq!(db.priority_of("/afs/xy"), None);
}

#[test]
fn priority_of_children_reaches_one_level() {
    for depth in ["c", "c+"] {
        let db = db(&format!("a /afs/x 50:{depth}"));
        assert_eq!(db.priority_of("/afs/x"), Some(50));
        assert_eq!(db.priority_of("/afs/x/child"), Some(50));
        assert_eq!(db.priority_of("/afs/x/child/grandchild"), None);
        assert_eq!(db.priority_of("/afs/xy"), None);
    }
}

#[test]
fn priority_of_descendants_reaches_every_level() {
    for depth in ["d", "d+"] {
        let db = db(&format!("a /afs/x 50:{depth}"));
        assert_eq!(db.priority_of("/afs/x"), Some(50));
        assert_eq!(db.priority_of("/afs/x/a"), Some(50));
        assert_eq!(db.priority_of("/afs/x/a/b/c/d/e"), Some(50));
        assert_eq!(db.priority_of("/afs/xy/a"), None);
        assert_eq!(db.priority_of("/afs"), None);
    }
    let root = db("a / 3:d");
    assert_eq!(root.priority_of("/"), Some(3));
    assert_eq!(root.priority_of("/anything/at/all"), Some(3));
}

#[test]
fn priority_of_overlapping_entries_is_the_highest() {
    let db = db("a /afs 20:d\na /afs/proj 100:c\na /afs/proj/big 5\na /afs/proj/src 300:d+");
    assert_eq!(db.priority_of("/afs"), Some(20));
    assert_eq!(db.priority_of("/afs/other/file"), Some(20));
    // The entry's own priority is lower than its parent's `c`.
    assert_eq!(db.priority_of("/afs/proj/big"), Some(100));
    assert_eq!(db.priority_of("/afs/proj/readme"), Some(100));
    // Two levels below the `c`, only the `d` above it reaches.
    assert_eq!(db.priority_of("/afs/proj/big/part"), Some(20));
    assert_eq!(db.priority_of("/afs/proj/src"), Some(300));
    assert_eq!(db.priority_of("/afs/proj/src/deep/file.rs"), Some(300));
}

#[test]
fn priority_of_normalises_its_argument() {
    let db = db("a /afs/x 50:c");
    assert_eq!(db.priority_of("//afs/x/"), Some(50));
    assert_eq!(db.priority_of("/afs//x///child"), Some(50));
    assert_eq!(db.priority_of("afs/x"), None);
    assert_eq!(db.priority_of("/afs/x/../x"), None);
    assert_eq!(db.priority_of(""), None);
    // Names the namespace may hold that no profile can name are still covered.
    assert_eq!(db.priority_of("/afs/x/bell\x07"), Some(50));
    assert_eq!(HoardDb::new().priority_of("/afs/x"), None);
}

#[test]
fn to_profile_lists_one_line_per_entry() {
    let db = db(r#"a /b 5:d+
a "/a b" c
a /c"#);
    assert_eq!(db.to_profile(), "a \"/a b\" 10:c\na /b 5:d+\na /c 10\n");
    assert_eq!(HoardDb::new().to_profile(), "");
    let mut again = HoardDb::new();
    again.apply("list", &parse_lines(&db.to_profile(), "list").unwrap()).unwrap();
    assert_eq!(again, db);
}

#[test]
fn apply_takes_commands_built_by_hand() {
    let mut db = HoardDb::new();
    let commands =
        [(1, Command::Add(entry("/x", 5, Entry, false))), (2, Command::List), (3, Command::Delete("/x".into()))];
    db.apply("cli", &commands).unwrap();
    assert!(db.is_empty());
}
