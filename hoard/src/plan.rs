//! The hoard walk planner: which paths a walk must cover, in what order.

use std::collections::{HashSet, VecDeque};

use crate::entry::join;
use crate::{Depth, HoardDb, HoardEntry};

/// What a hoard walk must cover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Highest priority first, then by path; each path once, with the highest priority of the
    /// entries that cover it.
    pub items: Vec<PlanItem>,
    /// The plan stopped at its `max_items` bound: paths of lower priority (or of the same
    /// priority, deeper or later) were left out.
    pub truncated: bool,
    /// Sorted, without repeats: entry paths the namespace could not resolve, and directories
    /// it could not list.
    pub missing: Vec<String>,
}

/// One path a walk must fetch (or keep fresh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanItem {
    pub path: String,
    pub priority: u16,
    pub is_dir: bool,
}

/// The tree a walk covers, as the planner sees it (venus's namespace; a fake in tests). Paths
/// are absolute and normalised.
pub trait Namespace {
    /// The entries of directory `dir`, each a name and whether it is a directory; `None` when
    /// it cannot be listed. Names that are empty, `.`, `..`, or hold `/` or NUL are ignored.
    fn list(&mut self, dir: &str) -> Option<Vec<(String, bool)>>;
    /// Whether `path` is a directory; `None` when it cannot be resolved.
    fn is_dir(&mut self, path: &str) -> Option<bool>;
}

/// Given the entries and a way to list a directory, decides which paths a hoard walk must
/// cover: an entry's path, and its children (`c`) or its whole subtree (`d`), at most
/// `max_items` paths. Entries are expanded from the highest priority down, subtrees breadth
/// first, so the bound cuts what is wanted least.
pub fn plan(db: &HoardDb, ns: &mut dyn Namespace, max_items: usize) -> Plan {
    let mut entries: Vec<&HoardEntry> = db.entries().collect();
    // Stable: entries of equal priority stay in path order.
    entries.sort_by_key(|e| std::cmp::Reverse(e.priority));
    let mut planner = Planner { ns, max_items, seen: HashSet::new(), expanded: HashSet::new(), plan: Plan::default() };
    for e in entries {
        if planner.expand(e).is_err() {
            planner.plan.truncated = true;
            break;
        }
    }
    let mut plan = planner.plan;
    plan.items.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.path.cmp(&b.path)));
    plan.missing.sort();
    plan.missing.dedup();
    plan
}

/// The plan reached its bound.
struct Full;

struct Planner<'a> {
    ns: &'a mut dyn Namespace,
    max_items: usize,
    /// Paths in the plan. Entries come highest priority first, so a path's first priority is
    /// its highest.
    seen: HashSet<String>,
    /// Directories listed by a descendant expansion: their whole subtree is in the plan
    /// already, at a priority at least as high as any later entry's.
    expanded: HashSet<String>,
    plan: Plan,
}

impl Planner<'_> {
    fn expand(&mut self, e: &HoardEntry) -> Result<(), Full> {
        let Some(is_dir) = self.ns.is_dir(&e.path) else {
            self.plan.missing.push(e.path.clone());
            return Ok(());
        };
        self.push(&e.path, e.priority, is_dir)?;
        if !is_dir || self.expanded.contains(&e.path) {
            return Ok(());
        }
        match e.depth {
            Depth::Entry => {}
            Depth::Children => {
                for (child, is_dir) in self.list(&e.path) {
                    self.push(&child, e.priority, is_dir)?;
                }
            }
            Depth::Descendants => {
                let mut queue = VecDeque::from([e.path.clone()]);
                while let Some(dir) = queue.pop_front() {
                    if !self.expanded.insert(dir.clone()) {
                        continue;
                    }
                    for (child, is_dir) in self.list(&dir) {
                        self.push(&child, e.priority, is_dir)?;
                        if is_dir {
                            queue.push_back(child);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The children of `dir` as paths, sorted by name (none when it cannot be listed).
    fn list(&mut self, dir: &str) -> Vec<(String, bool)> {
        let Some(mut children) = self.ns.list(dir) else {
            self.plan.missing.push(dir.into());
            return Vec::new();
        };
        children.retain(|(name, _)| valid_name(name));
        children.sort();
        children.dedup_by(|a, b| a.0 == b.0);
        children.into_iter().map(|(name, is_dir)| (join(dir, &name), is_dir)).collect()
    }

    fn push(&mut self, path: &str, priority: u16, is_dir: bool) -> Result<(), Full> {
        if self.seen.contains(path) {
            return Ok(());
        }
        if self.plan.items.len() >= self.max_items {
            return Err(Full);
        }
        self.seen.insert(path.into());
        self.plan.items.push(PlanItem { path: path.into(), priority, is_dir });
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    !matches!(name, "" | "." | "..") && !name.contains(['/', '\0'])
}
