//! Property tests: entries round-trip through their lines, the database through its profile,
//! no input makes the parser panic, and the planner agrees with `priority_of`.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::plan::FakeNs;
use crate::{Command, Depth, HoardDb, HoardEntry, MAX_PRIORITY, format_entry, load_profiles, parse, parse_lines, plan};

/// A path component: letters, spaces, quotes, backslashes, `#`, `:`, dots and a few non-ASCII
/// characters (one of them Unicode whitespace); never `.` or `..`.
fn component() -> impl Strategy<Value = String> {
    "[a-z0-9 \"\\\\#:.+_é\u{a0}-]{1,8}".prop_filter("not . or ..", |c| c != "." && c != "..")
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(component(), 0..5).prop_map(|cs| format!("/{}", cs.join("/")))
}

fn depth() -> impl Strategy<Value = (Depth, bool)> {
    prop_oneof![
        Just((Depth::Entry, false)),
        any::<bool>().prop_map(|f| (Depth::Children, f)),
        any::<bool>().prop_map(|f| (Depth::Descendants, f)),
    ]
}

fn hoard_entry() -> impl Strategy<Value = HoardEntry> {
    (path(), 1..=MAX_PRIORITY, depth()).prop_map(|(path, priority, (depth, future))| {
        HoardEntry::new(&path, priority, depth, future).expect("generated entries are valid")
    })
}

/// Text that looks like a profile, to get past the first word more often than random text.
fn profile_like() -> impl Strategy<Value = String> {
    "([adcl#\" \t\\\\/:+.\n\r0-9xé]|add|c\\+|d\\+|1000|/afs/){0,60}"
}

proptest! {
    #[test]
    fn an_entry_round_trips_through_its_line(e in hoard_entry()) {
        let line = format_entry(&e);
        prop_assert_eq!(parse(&line, "t").unwrap(), vec![Command::Add(e.clone())]);
        // And padded with whitespace and ended with CRLF.
        let padded = format!("  {line} \r\n");
        prop_assert_eq!(parse(&padded, "t").unwrap(), vec![Command::Add(e)]);
    }

    #[test]
    fn parse_never_panics_on_strings(text in any::<String>()) {
        let _ = parse(&text, "t");
    }

    #[test]
    fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&String::from_utf8_lossy(&bytes), "t");
    }

    #[test]
    fn parse_and_apply_never_panic_on_profile_like_text(texts in prop::collection::vec(profile_like(), 1..4)) {
        let files: Vec<_> = texts.into_iter().enumerate().map(|(i, t)| (format!("{i}.hoard"), t)).collect();
        if let Err(e) = load_profiles(&files) {
            let message = e.to_string();
            prop_assert!(message.starts_with(&format!("{}:", e.label)), "{}", message);
            prop_assert!(!message.contains('\n'));
        }
        for (label, text) in &files {
            if let Ok(commands) = parse_lines(text, label) {
                for (line, _) in commands {
                    prop_assert!(line >= 1 && line <= text.split('\n').count());
                }
            }
        }
    }

    #[test]
    fn a_db_round_trips_through_its_profile(entries in prop::collection::vec(hoard_entry(), 0..20)) {
        let mut db = HoardDb::new();
        for e in entries {
            db.add(e);
        }
        let text = db.to_profile();
        let mut again = HoardDb::new();
        again.apply("list", &parse_lines(&text, "list").unwrap()).unwrap();
        prop_assert_eq!(&again, &db);
        prop_assert_eq!(load_profiles(&[("list".into(), text)]).unwrap(), db);
    }

    /// With room for everything, the plan holds exactly the existing paths some entry covers,
    /// each at the priority `priority_of` gives it.
    #[test]
    fn the_plan_agrees_with_priority_of(
        tree in prop::collection::btree_set("(/[abc]){1,4}/?", 0..20),
        entries in prop::collection::vec(("(/[abc]){0,3}", 1..=20u16, depth()), 0..6),
    ) {
        let tree: Vec<&str> = tree.iter().map(String::as_str).collect();
        let mut ns = FakeNs::new(&tree);
        let mut db = HoardDb::new();
        for (path, priority, (depth, future)) in entries {
            db.add(HoardEntry::new(if path.is_empty() { "/" } else { &path }, priority, depth, future).unwrap());
        }
        let plan = plan(&db, &mut ns, usize::MAX);
        prop_assert!(!plan.truncated);
        let expected: Vec<(String, u16)> = ns.nodes.keys().filter_map(|p| Some((p.clone(), db.priority_of(p)?))).collect();
        let mut got: Vec<(String, u16)> = plan.items.iter().map(|i| (i.path.clone(), i.priority)).collect();
        got.sort();
        prop_assert_eq!(got, expected);
        for pair in plan.items.windows(2) {
            prop_assert!((std::cmp::Reverse(pair[0].priority), &pair[0].path) < (std::cmp::Reverse(pair[1].priority), &pair[1].path));
        }
        for item in &plan.items {
            prop_assert_eq!(Some(&item.is_dir), ns.nodes.get(&item.path));
        }
        let missing: BTreeSet<&str> = db.entries().map(|e| e.path.as_str()).filter(|p| !ns.nodes.contains_key(*p)).collect();
        prop_assert_eq!(plan.missing.iter().map(String::as_str).collect::<BTreeSet<_>>(), missing);
    }

    /// A bound keeps a prefix of the full plan's priorities: nothing of lower priority is kept
    /// while something of higher priority is cut.
    #[test]
    fn a_bounded_plan_keeps_the_highest_priorities(
        tree in prop::collection::btree_set("(/[abc]){1,4}", 0..20),
        entries in prop::collection::vec(("(/[abc]){0,2}", 1..=5u16, depth()), 0..6),
        bound in 0..15usize,
    ) {
        let tree: Vec<&str> = tree.iter().map(String::as_str).collect();
        let mut db = HoardDb::new();
        for (path, priority, (depth, future)) in entries {
            db.add(HoardEntry::new(if path.is_empty() { "/" } else { &path }, priority, depth, future).unwrap());
        }
        let full = plan(&db, &mut FakeNs::new(&tree), usize::MAX);
        let cut = plan(&db, &mut FakeNs::new(&tree), bound);
        prop_assert_eq!(cut.items.len(), full.items.len().min(bound));
        prop_assert_eq!(cut.truncated, full.items.len() > bound);
        let full_priorities: Vec<u16> = full.items.iter().map(|i| i.priority).collect();
        let cut_priorities: Vec<u16> = cut.items.iter().map(|i| i.priority).collect();
        prop_assert_eq!(&cut_priorities[..], &full_priorities[..cut.items.len()]);
        for item in &cut.items {
            prop_assert!(full.items.contains(item));
        }
    }
}
