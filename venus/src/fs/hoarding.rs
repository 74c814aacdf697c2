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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The hoard: its entries (profiles and commands), the expansions fixed at first walks, and
/// the walks' progress. The walk itself runs in the core (`impl Venus` below), which reaches
/// this state only through these methods.
pub struct Hoarding {
    profile_dir: PathBuf,
    store: PathBuf,
    commands: Mutex<HoardDb>,
    profiles: Mutex<HoardDb>,
    profile_error: Mutex<Option<String>>,
    /// Expansions of entries without `+`, fixed at their first walk.
    snapshots: Mutex<HashMap<String, Vec<PlanItem>>>,
    progress: Mutex<Progress>,
    walking: tokio::sync::Mutex<()>,
    last_walk: Mutex<Option<Instant>>,
    /// Set when something asks for a walk soon (a profile edit, a reconnection).
    wanted: AtomicBool,
    /// Walk requests so far; a walk covers every request made before it started.
    requested: AtomicU64,
}

/// A walk under way: the only one (see [`Hoarding::begin_walk`]).
pub(crate) struct Walk<'a> {
    hoarding: &'a Hoarding,
    _one_walk: tokio::sync::MutexGuard<'a, ()>,
    /// The newest request this walk covers.
    covers: u64,
    started: Instant,
}

impl Walk<'_> {
    pub fn planned(&self, items: usize) {
        lock(&self.hoarding.progress).total = items as u64;
    }

    /// One more object done; `bytes` fetched by the walk so far.
    pub fn step(&self, bytes: u64) {
        let mut p = lock(&self.hoarding.progress);
        p.done += 1;
        p.bytes = bytes;
    }

    pub fn bytes(&self) -> u64 {
        lock(&self.hoarding.progress).bytes
    }

    pub fn finish(self, mut report: WalkReport) -> WalkReport {
        report.seconds = self.started.elapsed().as_secs_f64();
        *lock(&self.hoarding.last_walk) = Some(Instant::now());
        let mut p = lock(&self.hoarding.progress);
        p.running = false;
        p.completed = p.completed.max(self.covers);
        p.last = Some(report.clone());
        report
    }
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
            wanted: AtomicBool::new(true),
            requested: AtomicU64::new(0),
        };
        h.reload_profiles();
        h
    }

    pub fn profile_dir(&self) -> &Path {
        &self.profile_dir
    }

    /// Why the profiles in force are not the files' (the error that kept the last edit out).
    pub fn profile_error(&self) -> Option<String> {
        lock(&self.profile_error).clone()
    }

    /// Asks for a walk soon (profiles changed, the servers answer again).
    pub fn want_walk(&self) {
        self.wanted.store(true, Ordering::Relaxed);
    }

    /// Numbers a walk request (`hoard walk`): the walk that covers it says so in
    /// [`Progress::completed`].
    pub fn request_walk(&self) -> u64 {
        self.requested.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A walk for `request` failed before it finished: the request counts as answered.
    pub fn walk_failed(&self, request: u64) {
        let mut p = lock(&self.progress);
        p.running = false;
        p.completed = p.completed.max(request);
    }

    pub fn progress(&self) -> Progress {
        lock(&self.progress).clone()
    }

    /// Whether a walk is due: asked for, or `interval` since the last one.
    pub fn walk_due(&self, interval: std::time::Duration) -> bool {
        self.wanted.load(Ordering::Relaxed) || lock(&self.last_walk).is_none_or(|t| t.elapsed() >= interval)
    }

    /// Starts a walk, after the one running (if any) has finished.
    pub(crate) async fn begin_walk(&self) -> Walk<'_> {
        let one_walk = self.walking.lock().await;
        let covers = self.requested.load(Ordering::SeqCst);
        self.wanted.store(false, Ordering::Relaxed);
        let mut p = lock(&self.progress);
        p.running = true;
        p.done = 0;
        p.total = 0;
        p.bytes = 0;
        Walk { hoarding: self, _one_walk: one_walk, covers, started: Instant::now() }
    }

    /// Why each path the last walk could not bring in was missing.
    fn last_missing(&self) -> HashMap<String, String> {
        lock(&self.progress).last.as_ref().map(|r| r.missing.iter().cloned().collect()).unwrap_or_default()
    }

    /// An entry without `+` covers what it covered at its first walk: the first expansion is
    /// kept, and later ones are cut down to it.
    fn as_first_expanded(&self, entry: &str, items: &mut Vec<PlanItem>) {
        let mut snaps = lock(&self.snapshots);
        match snaps.get(entry) {
            Some(first) => items.retain(|i| first.iter().any(|f| f.path == i.path)),
            None => {
                snaps.insert(entry.to_string(), items.clone());
            }
        }
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
                self.want_walk();
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
        self.want_walk();
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
        self.want_walk();
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
                self.hoarding.as_first_expanded(&e.path, &mut items);
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
        let walk = self.hoarding.begin_walk().await;
        let me = self.clone();
        // Planning blocks on listings (block_in_place): run it on a worker of its own.
        let (items, truncated, entries, unresolved) =
            tokio::task::spawn(async move { me.hoard_plan(false) }).await.unwrap_or_default();
        walk.planned(items.len());
        self.cache.clear_priorities();
        let mut report = WalkReport { entries, objects: items.len(), truncated, ..WalkReport::default() };
        report.missing.extend(unresolved.into_iter().map(|p| (p, "cannot be resolved or listed".to_string())));
        let fetched = || self.counters.snapshot().others.get(crate::counters::BYTES_FETCHED).copied().unwrap_or(0);
        let fetched_before = fetched();
        for item in &items {
            match self.hoard_one(item).await {
                Ok(fetched) => report.fetched_files += u64::from(fetched),
                Err(e) => report.missing.push((item.path.clone(), reason(&e))),
            }
            walk.step(fetched() - fetched_before);
        }
        report.fetched_bytes = walk.bytes();
        let report = walk.finish(report);
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
        let connected = self.cells().any(|(_, c)| !c.is_down());
        if self.hoarding.walk_due(interval)
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
            ObjectKind::Symlink | ObjectKind::Fifo | ObjectKind::Socket => Ok(false),
        }
    }

    /// `hoard verify`: what the hoard covers that is not in the cache (or may be stale), and why.
    pub async fn hoard_verify(self: &Arc<Self>) -> WalkReport {
        let me = self.clone();
        let (items, truncated, entries, unresolved) =
            tokio::task::spawn(async move { me.hoard_plan(true) }).await.unwrap_or_default();
        let last = self.hoarding.last_missing();
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
