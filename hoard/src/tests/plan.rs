//! The walk planner against an in-memory namespace.

use std::collections::{BTreeMap, HashMap};

use crate::{HoardDb, Namespace, Plan, PlanItem, parse_lines, plan};

/// An in-memory tree: every path with whether it is a directory; directories listed in
/// `unlistable` fail to list. Counts the listings.
#[derive(Default)]
pub(crate) struct FakeNs {
    pub nodes: BTreeMap<String, bool>,
    pub unlistable: Vec<String>,
    pub lists: HashMap<String, usize>,
}

impl FakeNs {
    /// A tree from paths; a path ending in `/` is a directory. Parents are added as directories.
    pub fn new(paths: &[&str]) -> Self {
        let mut ns = FakeNs::default();
        ns.nodes.insert("/".into(), true);
        for p in paths {
            let is_dir = p.ends_with('/');
            let p = p.trim_end_matches('/');
            let mut at = 0;
            while let Some(i) = p[at + 1..].find('/') {
                at += i + 1;
                ns.nodes.insert(p[..at].into(), true);
            }
            ns.nodes.insert(p.into(), is_dir);
        }
        ns
    }
}

impl Namespace for FakeNs {
    fn list(&mut self, dir: &str) -> Option<Vec<(String, bool)>> {
        *self.lists.entry(dir.into()).or_default() += 1;
        if self.unlistable.iter().any(|u| u == dir) || self.nodes.get(dir) != Some(&true) {
            return None;
        }
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        let children = self.nodes.iter().filter_map(|(path, &is_dir)| {
            let name = path.strip_prefix(&prefix)?;
            (!name.is_empty() && !name.contains('/')).then(|| (name.to_string(), is_dir))
        });
        // Listed in reverse, to show the plan does not depend on listing order.
        Some(children.collect::<Vec<_>>().into_iter().rev().collect())
    }

    fn is_dir(&mut self, path: &str) -> Option<bool> {
        self.nodes.get(path).copied()
    }
}

fn db(text: &str) -> HoardDb {
    let mut db = HoardDb::new();
    db.apply("t", &parse_lines(text, "t").unwrap()).unwrap();
    db
}

fn items(plan: &Plan) -> Vec<(&str, u16, bool)> {
    plan.items.iter().map(|i| (i.path.as_str(), i.priority, i.is_dir)).collect()
}

fn tree() -> FakeNs {
    FakeNs::new(&["/p/a", "/p/b/", "/p/b/x", "/p/b/y/", "/p/b/y/z", "/p/c", "/q/f", "/q/g"])
}

#[test]
fn an_entry_is_its_path_only() {
    let mut ns = tree();
    let plan = plan(&db("a /p 5\na /p/a 7"), &mut ns, 100);
    assert_eq!(items(&plan), [("/p/a", 7, false), ("/p", 5, true)]);
    assert!(!plan.truncated);
    assert!(ns.lists.is_empty(), "no listing for entries without depth");
}

#[test]
fn children_are_one_level_down() {
    let plan = plan(&db("a /p 5:c"), &mut tree(), 100);
    assert_eq!(items(&plan), [("/p", 5, true), ("/p/a", 5, false), ("/p/b", 5, true), ("/p/c", 5, false)]);
}

#[test]
fn descendants_are_the_whole_subtree() {
    let plan = plan(&db("a /p 5:d+"), &mut tree(), 100);
    let paths: Vec<_> = plan.items.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["/p", "/p/a", "/p/b", "/p/b/x", "/p/b/y", "/p/b/y/z", "/p/c"]);
    let whole = plan_of("a / 1:d", 100);
    assert_eq!(whole.items.len(), 11, "{whole:?}");
}

fn plan_of(text: &str, max_items: usize) -> Plan {
    plan(&db(text), &mut tree(), max_items)
}

#[test]
fn depth_on_a_file_is_just_the_file() {
    assert_eq!(items(&plan_of("a /q/f 5:d\na /p/a 6:c", 100)), [("/p/a", 6, false), ("/q/f", 5, false)]);
}

#[test]
fn overlapping_entries_keep_each_path_once_at_its_highest_priority() {
    let plan = plan_of("a / 1:d\na /p/b 50:c\na /p/b/y/z 900\na /q 20:c", 100);
    assert_eq!(
        items(&plan),
        [
            ("/p/b/y/z", 900, false),
            ("/p/b", 50, true),
            ("/p/b/x", 50, false),
            ("/p/b/y", 50, true),
            ("/q", 20, true),
            ("/q/f", 20, false),
            ("/q/g", 20, false),
            ("/", 1, true),
            ("/p", 1, true),
            ("/p/a", 1, false),
            ("/p/c", 1, false),
        ],
    );
    let db = db("a / 1:d\na /p/b 50:c\na /p/b/y/z 900\na /q 20:c");
    for item in &plan.items {
        assert_eq!(db.priority_of(&item.path), Some(item.priority), "{}", item.path);
    }
}

#[test]
fn no_directory_is_listed_twice_for_descendants() {
    let mut ns = tree();
    let plan = plan(&db("a /p 100:d\na /p/b 50:d\na /p/b/y 10:c\na / 1:d"), &mut ns, 100);
    assert_eq!(plan.items.len(), 11);
    assert!(ns.lists.values().all(|&n| n == 1), "{:?}", ns.lists);
}

#[test]
fn max_items_cuts_the_lowest_priorities_first() {
    let text = "a /q 500:c\na /p 5:d";
    let full = plan_of(text, 100);
    assert_eq!(full.items.len(), 10);
    assert!(!full.truncated);
    let cut = plan_of(text, 5);
    assert!(cut.truncated);
    assert_eq!(
        items(&cut),
        [("/q", 500, true), ("/q/f", 500, false), ("/q/g", 500, false), ("/p", 5, true), ("/p/a", 5, false)]
    );
    // Breadth first: the shallow part of a subtree comes before the deep part.
    let cut = plan_of("a /p 5:d", 5);
    let paths: Vec<_> = cut.items.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["/p", "/p/a", "/p/b", "/p/b/x", "/p/c"]);
    // Exactly at the bound is not truncated.
    assert!(!plan_of(text, 10).truncated);
    let none = plan_of(text, 0);
    assert!(none.items.is_empty() && none.truncated);
    assert_eq!(plan_of("", 0), Plan::default());
}

#[test]
fn unresolvable_paths_are_skipped_and_reported() {
    let mut ns = tree();
    ns.unlistable.push("/p/b".into());
    let plan = plan(&db("a /gone 900:d\na /p 5:d\na /p/b 3:c\na /p/c/nope 4"), &mut ns, 100);
    assert_eq!(plan.missing, ["/gone", "/p/b", "/p/c/nope"]);
    let paths: Vec<_> = plan.items.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["/p", "/p/a", "/p/b", "/p/c"]);
}

/// A namespace that lists junk names and loops forever (each directory holds itself).
struct Hostile;

impl Namespace for Hostile {
    fn list(&mut self, _dir: &str) -> Option<Vec<(String, bool)>> {
        let names = ["", ".", "..", "a/b", "nul\0", "loop", "loop", "file"];
        Some(names.iter().map(|n| (n.to_string(), !n.starts_with('f'))).collect())
    }

    fn is_dir(&mut self, _path: &str) -> Option<bool> {
        Some(true)
    }
}

#[test]
fn hostile_namespaces_are_bounded_and_filtered() {
    let plan = plan(&db("a /x 5:d"), &mut Hostile, 7);
    assert!(plan.truncated);
    assert_eq!(plan.items.len(), 7);
    assert_eq!(plan.items[0], PlanItem { path: "/x".into(), priority: 5, is_dir: true });
    assert!(plan.items.iter().all(|i| i.path.starts_with("/x") && !i.path.contains("/.") && !i.path.contains('\0')));
    assert!(plan.items.iter().any(|i| i.path == "/x/loop/loop/file"));
}
