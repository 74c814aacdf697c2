//! Hoarding: making sure what the user named is in the cache before they go offline.
//!
//! The hoard is the union of the profiles in a watched directory (plain text, Coda's format) and
//! the entries added with the `hoard` command (kept in the cache directory). A walk expands the
//! entries against the namespace (crossing mount points and following symlinks, which are
//! hoarded on the way), fetches what is missing or stale in priority order, and marks each
//! object with its hoard priority so eviction keeps it. Entries without `+` keep the children
//! they had at their first walk; `+` entries pick up new ones at every walk.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hoard::{HoardDb, HoardEntry, Namespace, PlanItem};
use proto::ObjectKind;
use serde::{Deserialize, Serialize};

use super::{Node, Venus, lock};
use crate::error::{Result, VenusError};
use crate::ids::ROOT_INO;

/// The most objects one walk covers.
const MAX_ITEMS: usize = 200_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WalkReport {
    pub entries: usize,
    pub objects: usize,
    pub fetched_files: u64,
    pub fetched_bytes: u64,
    /// Paths the hoard covers that are not in the cache, with the reason.
    pub missing: Vec<(String, String)>,
    pub truncated: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub running: bool,
    /// The newest walk request number a finished walk has covered.
    pub completed: u64,
    pub done: u64,
    pub total: u64,
    pub bytes: u64,
    pub last: Option<WalkReport>,
}

/// Hoard state held by venus.
pub struct Hoarding {
    pub profile_dir: PathBuf,
    store: PathBuf,
    commands: Mutex<HoardDb>,
    profiles: Mutex<HoardDb>,
    pub profile_error: Mutex<Option<String>>,
    /// Expansions of entries without `+`, fixed at their first walk.
    snapshots: Mutex<HashMap<String, Vec<PlanItem>>>,
    pub progress: Mutex<Progress>,
    walking: tokio::sync::Mutex<()>,
    pub last_walk: Mutex<Option<Instant>>,
    /// Set when something asks for a walk soon (a profile edit, a reconnection).
    pub wanted: std::sync::atomic::AtomicBool,
    /// Walk requests so far; a walk covers every request made before it started.
    pub requested: std::sync::atomic::AtomicU64,
}

impl Hoarding {
    pub fn new(profile_dir: PathBuf, cache_dir: &Path) -> Self {
        let store = cache_dir.join("hoard-entries.json");
        let commands =
            std::fs::read_to_string(&store).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        let h = Hoarding {
            profile_dir,
            store,
            commands: Mutex::new(commands),
            profiles: Mutex::new(HoardDb::new()),
            profile_error: Mutex::new(None),
            snapshots: Mutex::new(HashMap::new()),
            progress: Mutex::new(Progress::default()),
            walking: tokio::sync::Mutex::new(()),
            last_walk: Mutex::new(None),
            wanted: std::sync::atomic::AtomicBool::new(true),
            requested: std::sync::atomic::AtomicU64::new(0),
        };
        h.reload_profiles();
        h
    }

    /// Re-reads every `*.hoard` file of the profile directory. All or nothing: a profile with an
    /// error leaves the previous hoard in force, and the error is kept for `hoard list`.
    pub fn reload_profiles(&self) {
        let mut files: Vec<(String, String)> = Vec::new();
        if let Ok(dir) = std::fs::read_dir(&self.profile_dir) {
            let mut paths: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "hoard"))
                .collect();
            paths.sort();
            for p in paths {
                match std::fs::read_to_string(&p) {
                    Ok(text) => files.push((p.display().to_string(), text)),
                    Err(e) => {
                        *lock(&self.profile_error) = Some(format!("{}: {e}", p.display()));
                        return;
                    }
                }
            }
        }
        match hoard::load_profiles(&files) {
            Ok(db) => {
                *lock(&self.profiles) = db;
                *lock(&self.profile_error) = None;
                self.wanted.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(files = files.len(), "hoard profiles loaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "hoard profile not loaded; the previous hoard stays");
                *lock(&self.profile_error) = Some(e.to_string());
            }
        }
    }

    /// Profiles first, then the command's entries (which win for the same path).
    pub fn effective(&self) -> HoardDb {
        let mut db = lock(&self.profiles).clone();
        for e in lock(&self.commands).entries() {
            db.add(e.clone());
        }
        db
    }

    fn save(&self, db: &HoardDb) -> Result<()> {
        let text = serde_json::to_string(db).map_err(|e| VenusError::Io(std::io::Error::other(e)))?;
        let tmp = self.store.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.store)?;
        Ok(())
    }

    pub fn add(&self, e: HoardEntry) -> Result<()> {
        let mut db = lock(&self.commands);
        db.add(e);
        self.save(&db)?;
        self.wanted.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Removes an entry added by command; entries from profiles are edited in their file.
    pub fn remove(&self, path: &str) -> std::result::Result<(), String> {
        let mut db = lock(&self.commands);
        if db.remove(path) {
            self.save(&db).map_err(|e| e.to_string())?;
            lock(&self.snapshots).remove(path);
            return Ok(());
        }
        if lock(&self.profiles).entries().any(|e| e.path == path) {
            return Err(format!("{path} comes from a profile in {}: edit it there", self.profile_dir.display()));
        }
        Err(format!("{path} is not hoarded"))
    }

    /// Applies a whole profile text to the command's entries (`hoard load`), all or nothing.
    pub fn load(&self, text: &str, label: &str) -> std::result::Result<usize, String> {
        let mut db = lock(&self.commands).clone();
        let lines = hoard::parse_lines(text, label).map_err(|e| e.to_string())?;
        let n = lines.len();
        db.apply(label, &lines).map_err(|e| e.to_string())?;
        self.save(&db).map_err(|e| e.to_string())?;
        *lock(&self.commands) = db;
        self.wanted.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }

    /// Every entry in force, with where it comes from.
    pub fn list(&self) -> Vec<(HoardEntry, &'static str)> {
        let commands = lock(&self.commands).clone();
        let mut out: BTreeMap<String, (HoardEntry, &'static str)> = BTreeMap::new();
        for e in lock(&self.profiles).entries() {
            out.insert(e.path.clone(), (e.clone(), "profile"));
        }
        for e in commands.entries() {
            out.insert(e.path.clone(), (e.clone(), "command"));
        }
        out.into_values().collect()
    }
}

/// The namespace as the walk planner sees it, through the core. `cached_only` never asks a
/// server (for `hoard verify`).
struct WalkNamespace<'a> {
    core: &'a Arc<Venus>,
    rt: tokio::runtime::Handle,
    cached_only: bool,
}

impl WalkNamespace<'_> {
    fn run<T>(&self, f: impl Future<Output = Option<T>>) -> Option<T> {
        tokio::task::block_in_place(|| self.rt.block_on(f))
    }
}

impl Namespace for WalkNamespace<'_> {
    fn list(&mut self, dir: &str) -> Option<Vec<(String, bool)>> {
        let (core, cached_only) = (self.core, self.cached_only);
        self.run(async move {
            let node = core.resolve_hoard_path(dir, cached_only).await.ok()?;
            let ino = match node {
                Node::Root => ROOT_INO,
                Node::Object(g) => g.ino(),
            };
            if cached_only && let Node::Object(g) = node {
                let entries = core.cache.listing(&g)?;
                return Some(
                    entries.iter().map(|e| (e.name.to_string(), crate::cache::shows_as_dir(e.kind))).collect(),
                );
            }
            let entries = core.readdir(ino).await.ok()?;
            Some(entries.into_iter().map(|(_, kind, name)| (name, kind == ObjectKind::Directory)).collect())
        })
    }

    fn is_dir(&mut self, path: &str) -> Option<bool> {
        let (core, cached_only) = (self.core, self.cached_only);
        self.run(async move {
            match core.resolve_hoard_path(path, cached_only).await.ok()? {
                Node::Root => Some(true),
                Node::Object(g) => {
                    let attr = if cached_only { core.cache.attr(&g)? } else { core.status(g).await.ok()? };
                    Some(crate::cache::shows_as_dir(attr.kind))
                }
            }
        })
    }
}

impl Venus {
    /// The objects the hoard covers now, highest priority first.
    fn hoard_plan(self: &Arc<Self>, cached_only: bool) -> (Vec<PlanItem>, bool, usize, Vec<String>) {
        let db = self.hoarding.effective();
        let mut ns = WalkNamespace { core: self, rt: tokio::runtime::Handle::current(), cached_only };
        let mut merged: HashMap<String, PlanItem> = HashMap::new();
        let mut truncated = false;
        let mut unresolved = Vec::new();
        let entries: Vec<HoardEntry> = db.entries().cloned().collect();
        for e in &entries {
            let mut one = HoardDb::new();
            one.add(e.clone());
            let plan = hoard::plan(&one, &mut ns, MAX_ITEMS);
            truncated |= plan.truncated;
            unresolved.extend(plan.missing);
            let mut items = plan.items;
            if !e.future && e.depth != hoard::Depth::Entry && !cached_only {
                // Without `+`, the entry covers what it covered at its first walk.
                let mut snaps = lock(&self.hoarding.snapshots);
                match snaps.get(&e.path) {
                    Some(first) => items.retain(|i| first.iter().any(|f| f.path == i.path)),
                    None => {
                        snaps.insert(e.path.clone(), items.clone());
                    }
                }
            }
            for item in items {
                merged
                    .entry(item.path.clone())
                    .and_modify(|m| m.priority = m.priority.max(item.priority))
                    .or_insert(item);
            }
        }
        let mut items: Vec<PlanItem> = merged.into_values().collect();
        items.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.path.cmp(&b.path)));
        unresolved.sort();
        unresolved.dedup();
        (items, truncated, entries.len(), unresolved)
    }

    /// A hoard walk: fetches what the hoard covers and is missing or stale, in priority order.
    pub async fn hoard_walk(self: &Arc<Self>) -> Result<WalkReport> {
        let _one_walk = self.hoarding.walking.lock().await;
        let covers = self.hoarding.requested.load(std::sync::atomic::Ordering::SeqCst);
        let started = Instant::now();
        self.hoarding.wanted.store(false, std::sync::atomic::Ordering::Relaxed);
        {
            let mut p = lock(&self.hoarding.progress);
            p.running = true;
            p.done = 0;
            p.total = 0;
            p.bytes = 0;
        }
        let me = self.clone();
        // Planning blocks on listings (block_in_place): run it on a worker of its own.
        let (items, truncated, entries, unresolved) =
            tokio::task::spawn(async move { me.hoard_plan(false) }).await.unwrap_or_default();
        lock(&self.hoarding.progress).total = items.len() as u64;
        self.cache.clear_priorities();
        let mut report = WalkReport { entries, objects: items.len(), truncated, ..WalkReport::default() };
        report.missing.extend(unresolved.into_iter().map(|p| (p, "cannot be resolved or listed".to_string())));
        let fetched_before = self.counters.snapshot().others.get(crate::counters::BYTES_FETCHED).copied().unwrap_or(0);
        for item in &items {
            match self.hoard_one(item).await {
                Ok(fetched) => report.fetched_files += u64::from(fetched),
                Err(e) => report.missing.push((item.path.clone(), reason(&e))),
            }
            let mut p = lock(&self.hoarding.progress);
            p.done += 1;
            p.bytes = self.counters.snapshot().others.get(crate::counters::BYTES_FETCHED).copied().unwrap_or(0)
                - fetched_before;
        }
        report.fetched_bytes = lock(&self.hoarding.progress).bytes;
        report.seconds = started.elapsed().as_secs_f64();
        *lock(&self.hoarding.last_walk) = Some(Instant::now());
        let mut p = lock(&self.hoarding.progress);
        p.running = false;
        p.completed = p.completed.max(covers);
        p.last = Some(report.clone());
        tracing::info!(
            objects = report.objects,
            fetched = report.fetched_files,
            missing = report.missing.len(),
            "hoard walk done"
        );
        Ok(report)
    }

    /// Walks when one is due: periodically while connected, after a profile edit, after a
    /// reconnection.
    pub async fn maybe_walk(self: &Arc<Self>, interval: std::time::Duration) {
        let wanted = self.hoarding.wanted.load(std::sync::atomic::Ordering::Relaxed);
        let due = lock(&self.hoarding.last_walk).is_none_or(|t| t.elapsed() >= interval);
        let connected = self.cells().any(|(_, c)| !c.is_down());
        if (wanted || due)
            && connected
            && !self.hoarding.effective().is_empty()
            && let Err(e) = self.hoard_walk().await
        {
            tracing::info!(error = %e, "hoard walk postponed");
        }
    }

    /// Brings one hoarded object into the cache; true if its contents were fetched.
    async fn hoard_one(&self, item: &PlanItem) -> Result<bool> {
        let g = match self.resolve_hoard_path(&item.path, false).await? {
            Node::Root => return Ok(false),
            Node::Object(g) => g,
        };
        self.cache.set_priority(&g, item.priority);
        let attr = self.status(g).await?;
        match attr.kind {
            ObjectKind::File => {
                let had = self.cache.get(&g).is_some_and(|c| c.has_data);
                self.data(g).await?;
                Ok(!had)
            }
            ObjectKind::Directory | ObjectKind::MountPoint => {
                self.listing(g).await?;
                Ok(false)
            }
            ObjectKind::Symlink => Ok(false),
        }
    }

    /// `hoard verify`: what the hoard covers that is not in the cache (or may be stale), and why.
    pub async fn hoard_verify(self: &Arc<Self>) -> WalkReport {
        let me = self.clone();
        let (items, truncated, entries, unresolved) =
            tokio::task::spawn(async move { me.hoard_plan(true) }).await.unwrap_or_default();
        let last: HashMap<String, String> = lock(&self.hoarding.progress)
            .last
            .as_ref()
            .map(|r| r.missing.iter().cloned().collect())
            .unwrap_or_default();
        let mut report = WalkReport { entries, objects: items.len(), truncated, ..WalkReport::default() };
        report
            .missing
            .extend(unresolved.into_iter().map(|p| (p, "not cached (cannot be resolved from the cache)".to_string())));
        for item in &items {
            let problem = match self.resolve_hoard_path(&item.path, true).await {
                Err(_) => Some(last.get(&item.path).cloned().unwrap_or_else(|| "not cached".into())),
                Ok(Node::Root) => None,
                Ok(Node::Object(g)) => match self.cache.get(&g) {
                    None => Some("not cached".into()),
                    Some(c) if c.attr.kind == ObjectKind::File && !c.has_data => {
                        Some(last.get(&item.path).cloned().unwrap_or_else(|| "contents not cached".into()))
                    }
                    Some(c) if c.attr.kind == ObjectKind::Directory && !self.cache.has_listing(&g) => {
                        Some("listing not cached".into())
                    }
                    Some(_) if !self.valid(&g) && !self.emulating(g.cell, g.fid.volume) => {
                        Some("cached, but may be stale (no promise)".into())
                    }
                    Some(_) => None,
                },
            };
            if let Some(p) = problem {
                report.missing.push((item.path.clone(), p));
            }
        }
        report
    }
}

fn reason(e: &VenusError) -> String {
    match e {
        VenusError::TooLargeForCache { .. } => "does not fit in the cache (higher priorities fill it)".into(),
        VenusError::NotCached => "not cached, and the servers cannot be reached".into(),
        VenusError::NotFound => "does not exist".into(),
        other => other.to_string(),
    }
}
