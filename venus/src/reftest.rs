//! A reference-model property test of the core, without FUSE or a server process: random
//! operations on two cores sharing one in-memory cell (`remote::fake`), compared step by step
//! with a model of what a POSIX file system with session semantics must show.
//!
//! Client A also goes offline (`venus disconnect`, or its link cut as a dead network would),
//! works from its cache, comes back and reintegrates; and it is restarted from its cache
//! mid-sequence (dropped without a clean shutdown, as a crash would). While A is offline the
//! two clients change different areas (`a/` and `b/`), so the model stays exact: A sees the tree
//! as it was when it left plus its own changes, B sees the server, and after reintegration both
//! see the union. Every operation's outcome (success or errno) and, at each `Check`, every name
//! and every byte both clients see, must match the model.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proto::cell::{CellFile, CellServer};

use crate::fs::{Config, Venus};
use crate::ids::ROOT_INO;
use crate::remote::Remote;
use crate::remote::fake::{FakeCell, Link};

const CELL: &str = "fake.test";

// ----- the model -----

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir(BTreeMap<String, Node>),
    /// A file, by identity: hard links are two names of one.
    File(u64),
    Symlink(String),
    /// A named pipe: a name and a kind, nothing more.
    Fifo,
}

#[derive(Debug, Clone, PartialEq)]
struct File {
    data: Vec<u8>,
    mode: u32,
}

/// What a client shows of a tree, and what the model says it must show.
#[derive(Debug, Clone, PartialEq)]
enum View {
    Dir(BTreeMap<String, View>),
    File { data: Vec<u8>, mode: u32, nlink: u32 },
    Symlink(String),
    Fifo,
}

/// A path below the cell's root, as names.
type Path = Vec<String>;

/// The tree both clients must show, and the errors POSIX (and AFS: all names of a file in one
/// directory) give.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    root: Node,
    files: BTreeMap<u64, File>,
    next: u64,
}

fn split(path: &[String]) -> (&[String], &str) {
    let (last, dir) = path.split_last().expect("paths are never empty");
    (dir, last)
}

impl Model {
    fn new() -> Model {
        let area = || Node::Dir(BTreeMap::new());
        let root = Node::Dir(BTreeMap::from([("a".into(), area()), ("b".into(), area())]));
        Model { root, files: BTreeMap::new(), next: 1 }
    }

    fn get(&self, path: &[String]) -> Option<&Node> {
        path.iter().try_fold(&self.root, |n, name| match n {
            Node::Dir(m) => m.get(name),
            _ => None,
        })
    }

    /// The directory `path` names, or the errno of walking to it.
    fn dir_mut(&mut self, path: &[String]) -> Result<&mut BTreeMap<String, Node>, i32> {
        let mut at = &mut self.root;
        for name in path {
            at = match at {
                Node::Dir(m) => m.get_mut(name).ok_or(libc::ENOENT)?,
                _ => return Err(libc::ENOTDIR),
            };
        }
        match at {
            Node::Dir(m) => Ok(m),
            _ => Err(libc::ENOTDIR),
        }
    }

    fn names_of(&self, id: u64) -> u32 {
        fn count(n: &Node, id: u64) -> u32 {
            match n {
                Node::Dir(m) => m.values().map(|c| count(c, id)).sum(),
                Node::File(f) => u32::from(*f == id),
                Node::Symlink(_) | Node::Fifo => 0,
            }
        }
        count(&self.root, id)
    }

    fn view(&self) -> View {
        fn of(m: &Model, n: &Node) -> View {
            match n {
                Node::Dir(d) => View::Dir(d.iter().map(|(k, c)| (k.clone(), of(m, c))).collect()),
                Node::File(id) => {
                    let f = &m.files[id];
                    View::File { data: f.data.clone(), mode: f.mode, nlink: m.names_of(*id) }
                }
                Node::Symlink(t) => View::Symlink(t.clone()),
                Node::Fifo => View::Fifo,
            }
        }
        of(self, &self.root)
    }

    fn write(&mut self, path: &[String], data: &[u8]) -> Result<(), i32> {
        let (dir, name) = split(path);
        let existing = self.dir_mut(dir)?.get(name).cloned();
        match existing {
            Some(Node::Dir(_)) => Err(libc::EISDIR),
            Some(Node::File(id)) => {
                self.files.entry(id).and_modify(|f| f.data = data.to_vec());
                Ok(())
            }
            Some(Node::Symlink(_) | Node::Fifo) => {
                unreachable!("writes through symlinks or to pipes are not generated")
            }
            None => {
                let id = self.next;
                self.next += 1;
                self.files.insert(id, File { data: data.to_vec(), mode: 0o644 });
                self.dir_mut(dir)?.insert(name.into(), Node::File(id));
                Ok(())
            }
        }
    }

    /// A new entry (`mkdir`, `symlink`): the name must be free.
    fn make(&mut self, path: &[String], node: Node) -> Result<(), i32> {
        let (dir, name) = split(path);
        let d = self.dir_mut(dir)?;
        if d.contains_key(name) {
            return Err(libc::EEXIST);
        }
        d.insert(name.into(), node);
        Ok(())
    }

    fn link(&mut self, from: &[String], to: &[String]) -> Result<(), i32> {
        let ((fdir, _), (tdir, tname)) = (split(from), split(to));
        // As Linux: the source, the new name's directory, the new name, then the kinds.
        self.dir_mut(fdir)?;
        let source = self.get(from).cloned().ok_or(libc::ENOENT)?;
        if self.dir_mut(tdir)?.contains_key(tname) {
            return Err(libc::EEXIST);
        }
        let id = match source {
            Node::Dir(_) => return Err(libc::EPERM),
            Node::Symlink(_) | Node::Fifo => unreachable!("links of symlinks or pipes are not generated"),
            Node::File(id) => id,
        };
        if fdir != tdir {
            return Err(libc::EXDEV);
        }
        self.dir_mut(tdir)?.insert(tname.into(), Node::File(id));
        Ok(())
    }

    fn chmod(&mut self, path: &[String], mode: u32) -> Result<(), i32> {
        self.dir_mut(split(path).0)?;
        match self.get(path) {
            None => Err(libc::ENOENT),
            Some(Node::File(id)) => {
                let id = *id;
                self.files.entry(id).and_modify(|f| f.mode = mode);
                Ok(())
            }
            Some(_) => unreachable!("only files are changed mode"),
        }
    }

    fn unlink(&mut self, path: &[String]) -> Result<(), i32> {
        let (dir, name) = split(path);
        let d = self.dir_mut(dir)?;
        match d.get(name) {
            None => Err(libc::ENOENT),
            Some(Node::Dir(_)) => Err(libc::EISDIR),
            Some(_) => {
                d.remove(name);
                Ok(())
            }
        }
    }

    fn rmdir(&mut self, path: &[String]) -> Result<(), i32> {
        let (dir, name) = split(path);
        let d = self.dir_mut(dir)?;
        match d.get(name) {
            None => Err(libc::ENOENT),
            Some(Node::Dir(m)) if !m.is_empty() => Err(libc::ENOTEMPTY),
            Some(Node::Dir(_)) => {
                d.remove(name);
                Ok(())
            }
            Some(_) => Err(libc::ENOTDIR),
        }
    }

    fn rename(&mut self, from: &[String], to: &[String]) -> Result<(), i32> {
        let (fdir, fname) = split(from);
        let (tdir, tname) = split(to);
        // Both parents are walked first, then the source looked up (as Linux does).
        self.dir_mut(fdir)?;
        self.dir_mut(tdir)?;
        let moving = self.dir_mut(fdir)?.get(fname).cloned().ok_or(libc::ENOENT)?;
        if from == to {
            return Ok(());
        }
        let is_dir = matches!(moving, Node::Dir(_));
        if is_dir && to.starts_with(from) {
            return Err(libc::EINVAL);
        }
        match (&moving, self.get(to)) {
            // Two names of one file: rename does nothing.
            (Node::File(a), Some(Node::File(b))) if a == b => return Ok(()),
            (Node::Dir(_), Some(Node::Dir(m))) if !m.is_empty() => return Err(libc::ENOTEMPTY),
            (Node::Dir(_), Some(Node::File(_) | Node::Symlink(_) | Node::Fifo)) => return Err(libc::ENOTDIR),
            (Node::File(_) | Node::Symlink(_) | Node::Fifo, Some(Node::Dir(_))) => return Err(libc::EISDIR),
            _ => {}
        }
        if let Node::File(id) = moving
            && fdir != tdir
            && self.names_of(id) > 1
        {
            return Err(libc::EXDEV);
        }
        self.dir_mut(fdir)?.remove(fname);
        self.dir_mut(tdir)?.insert(tname.into(), moving);
        Ok(())
    }

    /// What a change does to the model, and the error it must fail with.
    fn apply(&mut self, change: &Op) -> Result<(), i32> {
        match change {
            Op::Write { path, seed, len, .. } => self.write(path, &contents(*seed, *len)),
            Op::Mkdir { path, .. } => self.make(path, Node::Dir(BTreeMap::new())),
            Op::Symlink { path, target, .. } => self.make(path, Node::Symlink(format!("t{target}"))),
            Op::Mkfifo { path, .. } => self.make(path, Node::Fifo),
            Op::Link { from, to, .. } => self.link(from, to),
            Op::Chmod { path, mode, .. } => self.chmod(path, *mode),
            Op::Unlink { path, .. } => self.unlink(path),
            Op::Rmdir { path, .. } => self.rmdir(path),
            Op::Rename { from, to, .. } => self.rename(from, to),
            Op::Check | Op::Leave { .. } | Op::Return | Op::Restart | Op::Pause => Ok(()),
        }
    }

    /// The model after a reintegration: `a/` as the client that was away left it (its files
    /// with what it wrote to them; nothing in `b/` names a file of `a/`, links stay in one
    /// directory).
    fn merged(&self, away: &Model) -> Model {
        fn ids(n: &Node, out: &mut Vec<u64>) {
            match n {
                Node::Dir(m) => m.values().for_each(|c| ids(c, out)),
                Node::File(id) => out.push(*id),
                Node::Symlink(_) | Node::Fifo => {}
            }
        }
        let mut out = self.clone();
        if let (Node::Dir(root), Some(a)) = (&mut out.root, away.get(&["a".to_string()])) {
            root.insert("a".into(), a.clone());
            let mut in_a = Vec::new();
            ids(a, &mut in_a);
            for id in in_a {
                out.files.insert(id, away.files[&id].clone());
            }
        }
        out.next = out.next.max(away.next);
        out
    }
}

// ----- operations -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    A,
    B,
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        who: Who,
        path: Path,
        seed: u8,
        len: usize,
    },
    Mkdir {
        who: Who,
        path: Path,
    },
    Symlink {
        who: Who,
        path: Path,
        target: u8,
    },
    Mkfifo {
        who: Who,
        path: Path,
    },
    Link {
        who: Who,
        from: Path,
        to: Path,
    },
    Chmod {
        who: Who,
        path: Path,
        mode: u32,
    },
    Unlink {
        who: Who,
        path: Path,
    },
    Rmdir {
        who: Who,
        path: Path,
    },
    Rename {
        who: Who,
        from: Path,
        to: Path,
    },
    /// Both clients show exactly the model.
    Check,
    /// A goes offline: by `venus disconnect`, or its network cut.
    Leave {
        cut: bool,
    },
    /// A comes back and reintegrates.
    Return,
    /// A dies and starts again from its cache.
    Restart,
    /// Time passes on both clients: a write-back window runs out, permits are asked for.
    Pause,
}

impl Op {
    /// Who makes the change, and the paths it names (`None`: not a change).
    fn by(&self) -> Option<(Who, Vec<&Path>)> {
        Some(match self {
            Op::Write { who, path, .. }
            | Op::Mkdir { who, path }
            | Op::Symlink { who, path, .. }
            | Op::Mkfifo { who, path }
            | Op::Chmod { who, path, .. }
            | Op::Unlink { who, path }
            | Op::Rmdir { who, path } => (*who, vec![path]),
            Op::Link { who, from, to } | Op::Rename { who, from, to } => (*who, vec![from, to]),
            Op::Check | Op::Leave { .. } | Op::Return | Op::Restart | Op::Pause => return None,
        })
    }
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![Just(Who::A), Just(Who::B)]
}

fn path() -> impl Strategy<Value = Path> {
    let area = prop_oneof![Just("a"), Just("b")];
    let child = prop_oneof![Just("x"), Just("y"), Just("z")];
    let below = proptest::option::of(prop_oneof![Just("p"), Just("q"), Just("s")]);
    (area, child, below).prop_map(|(a, c, b)| {
        let mut p = vec![a.to_string(), c.to_string()];
        p.extend(b.map(str::to_string));
        p
    })
}

/// Sizes around the edges: empty, one chunk, sent whole with its store (up to 64 KiB), and
/// several chunks uploaded ahead of the store.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0usize..3000, 1 => 60_000usize..70_000, 1 => 300_000usize..400_000]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (who(), path(), any::<u8>(), size()).prop_map(|(who, path, seed, len)| Op::Write { who, path, seed, len }),
        4 => (who(), path()).prop_map(|(who, path)| Op::Mkdir { who, path }),
        1 => (who(), path(), any::<u8>()).prop_map(|(who, path, target)| Op::Symlink { who, path, target }),
        1 => (who(), path()).prop_map(|(who, path)| Op::Mkfifo { who, path }),
        2 => (who(), path(), path()).prop_map(|(who, from, to)| Op::Link { who, from, to }),
        1 => (who(), path(), prop_oneof![Just(0o600), Just(0o640), Just(0o755)])
            .prop_map(|(who, path, mode)| Op::Chmod { who, path, mode }),
        2 => (who(), path()).prop_map(|(who, path)| Op::Unlink { who, path }),
        2 => (who(), path()).prop_map(|(who, path)| Op::Rmdir { who, path }),
        3 => (who(), path(), path()).prop_map(|(who, from, to)| Op::Rename { who, from, to }),
        2 => Just(Op::Check),
        1 => any::<bool>().prop_map(|cut| Op::Leave { cut }),
        1 => Just(Op::Return),
        1 => Just(Op::Restart),
        1 => Just(Op::Pause),
    ]
}

fn contents(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

// ----- the system under test -----

/// One client: a core on its own runtime, so a crash can drop both.
struct Client {
    cache: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    core: Arc<Venus>,
    link: Arc<Link>,
}

fn config(cache: &std::path::Path) -> Config {
    let server = CellServer { id: 1, address: "memory".into(), fingerprint: String::new() };
    Config {
        cache_dir: cache.to_path_buf(),
        cache_size: 64 << 20,
        cells: vec![CellFile { cell: CELL.into(), servers: vec![server] }],
        rpc_timeout: Duration::from_secs(5),
        mountpoint: cache.join("mnt"),
        hoard_dir: cache.join("hoard"),
        stream_from: 0,
        write_back: Some(Duration::from_millis(50)),
    }
}

impl Client {
    fn start(cell: &Arc<FakeCell>, cache: tempfile::TempDir) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let link_slot: Arc<std::sync::Mutex<Option<Arc<Link>>>> = Arc::default();
        let slot = link_slot.clone();
        let core = Venus::with_remotes(config(cache.path()), move |id, _, with| {
            let link = cell.link(id, with);
            *slot.lock().expect("slot") = Some(link.clone());
            Ok(link as Arc<dyn Remote>)
        })
        .expect("the core starts");
        let link = link_slot.lock().expect("slot").take().expect("the cell was connected");
        Client { cache, rt, core, link }
    }

    /// Drops the core and everything running for it, with no shutdown, and starts again from
    /// the same cache.
    fn restart(self, cell: &Arc<FakeCell>) -> Client {
        let Client { cache, rt, core, link } = self;
        let down = link.is_down();
        drop(rt);
        drop(core);
        let again = Client::start(cell, cache);
        again.link.set_down(down);
        again
    }

    fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(crate::user::as_user(0, f))
    }
}

/// The errno of a failed call, or success.
fn outcome<T>(r: crate::error::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.to_errno())
}

impl Client {
    /// The directory `path` names, walked as the kernel walks it: every step must be a
    /// directory (`ENOTDIR`).
    async fn resolve(&self, path: &[String]) -> Result<u64, i32> {
        let mut at = outcome(self.core.lookup(ROOT_INO, CELL).await)?;
        for name in path {
            if at.kind != proto::ObjectKind::Directory {
                return Err(libc::ENOTDIR);
            }
            at = outcome(self.core.lookup(at.ino, name).await)?;
        }
        if at.kind != proto::ObjectKind::Directory {
            return Err(libc::ENOTDIR);
        }
        Ok(at.ino)
    }

    async fn write(&self, path: &[String], data: &[u8]) -> Result<(), i32> {
        let (dir, name) = split(path);
        let parent = self.resolve(dir).await?;
        let fh = match self.core.lookup(parent, name).await {
            Ok(st) => outcome(self.core.open(st.ino, libc::O_WRONLY | libc::O_TRUNC).await)?.0,
            Err(crate::error::VenusError::NotFound) => {
                outcome(self.core.create(parent, name, 0o644, 0, 0, libc::O_WRONLY).await)?.1
            }
            Err(e) => return Err(e.to_errno()),
        };
        let written = outcome(self.core.write(fh, 0, data));
        let flushed = outcome(self.core.flush(fh).await);
        self.core.release(fh).await;
        written.and(flushed)
    }

    /// The change, made through the core as the kernel would ask for it.
    async fn apply(&self, change: &Op) -> Result<(), i32> {
        match change {
            Op::Write { path, seed, len, .. } => self.write(path, &contents(*seed, *len)).await,
            Op::Mkdir { path, .. } => {
                let (dir, name) = split(path);
                outcome(self.core.mkdir(self.resolve(dir).await?, name, 0o755, 0, 0).await).map(drop)
            }
            Op::Symlink { path, target, .. } => {
                let (dir, name) = split(path);
                let target = format!("t{target}");
                outcome(self.core.symlink(self.resolve(dir).await?, name, &target, 0, 0).await).map(drop)
            }
            Op::Mkfifo { path, .. } => {
                let (dir, name) = split(path);
                let parent = self.resolve(dir).await?;
                outcome(self.core.mknod(parent, name, proto::NodeKind::Fifo, 0o600, 0, 0).await).map(drop)
            }
            Op::Link { from, to, .. } => self.link(from, to).await,
            Op::Chmod { path, mode, .. } => {
                let (dir, name) = split(path);
                let st = outcome(self.core.lookup(self.resolve(dir).await?, name).await)?;
                let caller = crate::fs::Caller { uid: 0, gid: 0, pid: std::process::id() };
                let req = crate::fs::SetAttrRequest { mode: Some(*mode), caller, ..Default::default() };
                outcome(self.core.setattr(st.ino, req).await).map(drop)
            }
            Op::Unlink { path, .. } => {
                let (dir, name) = split(path);
                outcome(self.core.unlink(self.resolve(dir).await?, name).await)
            }
            Op::Rmdir { path, .. } => {
                let (dir, name) = split(path);
                outcome(self.core.rmdir(self.resolve(dir).await?, name).await)
            }
            Op::Rename { from, to, .. } => {
                let ((fdir, fname), (tdir, tname)) = (split(from), split(to));
                let (f, t) = (self.resolve(fdir).await?, self.resolve(tdir).await?);
                outcome(self.core.rename(f, fname, t, tname, false).await)
            }
            Op::Check | Op::Leave { .. } | Op::Return | Op::Restart | Op::Pause => Ok(()),
        }
    }

    async fn link(&self, from: &[String], to: &[String]) -> Result<(), i32> {
        let ((fdir, fname), (tdir, tname)) = (split(from), split(to));
        let source = outcome(self.core.lookup(self.resolve(fdir).await?, fname).await)?;
        let dir = self.resolve(tdir).await?;
        // As the kernel does before asking the file system.
        if self.core.lookup(dir, tname).await.is_ok() {
            return Err(libc::EEXIST);
        }
        if source.kind == proto::ObjectKind::Directory {
            return Err(libc::EPERM);
        }
        outcome(self.core.link(source.ino, dir, tname).await).map(drop)
    }

    async fn read(&self, ino: u64) -> Result<Vec<u8>, i32> {
        let (fh, _) = outcome(self.core.open(ino, libc::O_RDONLY).await)?;
        let data = outcome(self.core.read(fh, 0, 1 << 22));
        self.core.release(fh).await;
        data
    }

    /// Everything the client shows below `ino`.
    fn tree(&self, ino: u64) -> futures_util::future::BoxFuture<'_, Result<View, i32>> {
        Box::pin(async move {
            let mut out = BTreeMap::new();
            for (child, kind, name) in outcome(self.core.readdir(ino).await)? {
                if name == "." || name == ".." {
                    continue;
                }
                let view = match kind {
                    proto::ObjectKind::Directory => self.tree(child).await?,
                    proto::ObjectKind::Symlink => View::Symlink(outcome(self.core.readlink(child).await)?),
                    // As `ls -l` would: its attributes are cached too.
                    proto::ObjectKind::Fifo => outcome(self.core.getattr(child).await).map(|_| View::Fifo)?,
                    _ => {
                        let st = outcome(self.core.getattr(child).await)?;
                        View::File { data: self.read(child).await?, mode: st.mode & 0o7777, nlink: st.nlink }
                    }
                };
                out.insert(name, view);
            }
            Ok(View::Dir(out))
        })
    }

    async fn sync(&self) {
        self.core.clear_forced();
        self.core.tick().await;
        for _ in 0..20 {
            match self.core.sync(Duration::from_millis(200)).await {
                Ok(p) if p.done => return,
                _ => self.core.tick().await,
            }
        }
        panic!("the log did not drain: {:?}", self.core.cml.summary());
    }
}

struct World {
    cell: Arc<FakeCell>,
    a: Option<Client>,
    b: Client,
    /// What the server has (and B shows).
    model: Model,
    /// While A is away: what A shows.
    away: Option<Model>,
    /// Whether the cell grants write-back permits.
    permits: bool,
}

impl World {
    /// A cell of two clients; with `permits`, the cell grants write-back permits, so a client's
    /// changes may wait in its log (sent within the window) and the other's calls recall them.
    fn new(permits: bool) -> World {
        let cell = FakeCell::new(CELL);
        if permits {
            cell.grant_permits();
        }
        let a = Client::start(&cell, tempfile::tempdir().expect("a cache"));
        let b = Client::start(&cell, tempfile::tempdir().expect("a cache"));
        for area in ["a", "b"] {
            let root = b.run(b.resolve(&[])).expect("the cell's root");
            b.run(b.core.mkdir(root, area, 0o755, 0, 0)).expect("an area");
        }
        World { cell, a: Some(a), b, model: Model::new(), away: None, permits }
    }

    fn a(&self) -> &Client {
        self.a.as_ref().expect("A is running")
    }

    fn client(&self, who: Who) -> &Client {
        match who {
            Who::A => self.a(),
            Who::B => &self.b,
        }
    }

    /// While A is away each client keeps to its own area; others' operations are skipped.
    fn allowed(&self, who: Who, paths: &[&Path]) -> bool {
        let area = match who {
            Who::A => "a",
            Who::B => "b",
        };
        self.away.is_none() || paths.iter().all(|p| p[0] == area)
    }

    fn model_for(&mut self, who: Who) -> &mut Model {
        match (who, &mut self.away) {
            (Who::A, Some(m)) => m,
            _ => &mut self.model,
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Check => self.check(),
            Op::Leave { cut } => self.leave(*cut),
            Op::Return => self.come_back(),
            Op::Restart => {
                self.restart_a();
                Ok(())
            }
            Op::Pause => {
                // Longer than the window (50 ms), so what a permit holds is sent.
                for c in [self.a(), &self.b] {
                    c.run(async { tokio::time::sleep(Duration::from_millis(60)).await });
                }
                Ok(())
            }
            change => {
                let Some((who, paths)) = change.by() else { return Ok(()) };
                if self.skipped(who, change, &paths) {
                    return Ok(());
                }
                let c = self.client(who);
                let got = c.run(c.apply(change));
                if self.permits {
                    // The client's background work runs only while its runtime is driven: let it
                    // ask for the permit the change asked for, and send what a window holds.
                    c.run(async { tokio::time::sleep(Duration::from_millis(3)).await });
                }
                let want = self.model_for(who).apply(change);
                prop_assert_eq!(got, want, "{:?}", change);
                Ok(())
            }
        }
    }

    /// While A is away each client keeps to its own area; writes, links and mode changes
    /// through symlinks or of pipes are not modelled (a write to a pipe would wait for a reader).
    fn skipped(&mut self, who: Who, change: &Op, paths: &[&Path]) -> bool {
        let through_symlink = match change {
            Op::Write { path, .. } | Op::Chmod { path, .. } | Op::Link { from: path, .. } => {
                matches!(self.model_for(who).get(path), Some(Node::Symlink(_) | Node::Fifo))
            }
            _ => false,
        };
        let chmod_of_dir =
            matches!(change, Op::Chmod { path, .. } if matches!(self.model_for(who).get(path), Some(Node::Dir(_))));
        !self.allowed(who, paths) || through_symlink || chmod_of_dir
    }

    fn leave(&mut self, cut: bool) -> Result<(), TestCaseError> {
        if self.away.is_some() {
            return Ok(());
        }
        // Everything is cached before leaving (a hoard walk would do it): reading the whole
        // tree is the check.
        self.check()?;
        let a = self.a();
        if cut {
            a.link.set_down(true);
        } else {
            a.run(a.core.force_disconnect(a.link.id(), None));
        }
        // Files A makes while away get ids of their own.
        let mut away = self.model.clone();
        away.next += 1 << 32;
        self.away = Some(away);
        Ok(())
    }

    fn come_back(&mut self) -> Result<(), TestCaseError> {
        let Some(away) = self.away.take() else {
            return Ok(());
        };
        let a = self.a();
        a.link.set_down(false);
        a.run(a.sync());
        self.model = self.model.merged(&away);
        self.check()
    }

    fn restart_a(&mut self) {
        let forced = self.away.is_some() && !self.a().link.is_down();
        let a = self.a.take().expect("A is running").restart(&self.cell);
        if forced {
            a.run(a.core.force_disconnect(a.link.id(), None));
        }
        self.a = Some(a);
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let want_a = self.away.as_ref().unwrap_or(&self.model);
        for (who, want) in [(Who::A, want_a), (Who::B, &self.model)] {
            let c = self.client(who);
            let got = c.run(async { c.tree(c.resolve(&[]).await?).await });
            prop_assert_eq!(got, Ok(want.view()), "{:?} shows something else", who);
        }
        Ok(())
    }

    /// The end of a case: A comes back, and both show the same, the server's.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.step(&Op::Return)?;
        self.check()
    }
}

#[test]
fn changes_queued_behind_one_in_flight_go_to_the_server_together() {
    let cell = FakeCell::new(CELL);
    let a = Client::start(&cell, tempfile::tempdir().expect("a cache"));
    let b = Client::start(&cell, tempfile::tempdir().expect("a cache"));
    let root = a.run(a.resolve(&[])).expect("the cell's root");
    cell.set_latency(Duration::from_millis(50));
    let before = cell.change_requests.load(std::sync::atomic::Ordering::Relaxed);
    let names: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    let made = a.run(futures_util::future::join_all(names.iter().map(|n| a.core.mkdir(root, n, 0o755, 0, 0))));
    assert!(made.iter().all(|r| r.is_ok()), "{made:?}");
    let requests = cell.change_requests.load(std::sync::atomic::Ordering::Relaxed) - before;
    // The first goes alone; the 19 that queued behind it go in one request.
    assert_eq!(requests, 2, "20 changes at once took {requests} requests");
    cell.set_latency(Duration::ZERO);
    let listed = b.run(async { outcome(b.core.readdir(b.resolve(&[]).await?).await) }).expect("B lists the root");
    let dirs = listed.iter().filter(|(_, _, n)| names.contains(n)).count();
    assert_eq!(dirs, 20, "every change is on the server");
}

/// Drives the client's runtime until it holds the volume's permit.
fn hold_permit(c: &Client) {
    for _ in 0..200 {
        if c.core.holds_permit(c.link.id(), crate::remote::fake::VOLUME) {
            return;
        }
        c.run(async { tokio::time::sleep(Duration::from_millis(10)).await });
    }
    panic!("no permit was granted in 2 s");
}

fn pending(c: &Client) -> u64 {
    c.core.cml.summary().expect("the log's summary").iter().map(|v| v.records).sum()
}

#[test]
fn under_a_permit_changes_wait_in_the_log_a_recall_sends_them_and_a_crash_keeps_them() {
    use std::sync::atomic::Ordering::Relaxed;
    let cell = FakeCell::new(CELL);
    cell.grant_permits();
    let a = Client::start(&cell, tempfile::tempdir().expect("a cache"));
    let b = Client::start(&cell, tempfile::tempdir().expect("a cache"));
    let root = a.run(a.resolve(&[])).expect("the cell's root");
    // A's first change goes to the server, and asks for the volume's permit.
    a.run(a.core.mkdir(root, "first", 0o755, 0, 0)).expect("a directory");
    hold_permit(&a);

    // Under the permit the changes return from the log: no request is made for them.
    let before = cell.change_requests.load(Relaxed);
    let names: Vec<String> = (0..30).map(|i| format!("d{i}")).collect();
    for n in &names {
        a.run(a.core.mkdir(root, n, 0o755, 0, 0)).expect("a directory");
    }
    assert_eq!(cell.change_requests.load(Relaxed), before, "changes under a permit wait in the log");
    assert_eq!(pending(&a), 30);

    // A dies with them unsent: its log keeps them, and the restarted A sends them.
    let a = a.restart(&cell);
    assert_eq!(pending(&a), 30, "a crash keeps what the log holds");

    // B's listing recalls the permit: it waits until A's changes are on the server.
    let recalls = cell.recalls.load(Relaxed);
    // (The recall's answer runs on the caller's runtime here: a push is handled where it is sent.)
    let listed = b.run(async { outcome(b.core.readdir(b.resolve(&[]).await?).await) }).expect("B lists the root");
    let seen = listed.iter().filter(|(_, _, n)| names.contains(n)).count();
    assert_eq!(seen, 30, "B sees every change A's calls returned from");
    assert_eq!(cell.recalls.load(Relaxed), recalls + 1, "one recall");
    assert_eq!(pending(&a), 0, "A's log is empty");
    assert!(a.core.conflicts().expect("conflicts").is_empty(), "each change applied once");
}

fn cases() -> u32 {
    std::env::var("VENUS_REFTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(500)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn two_cores_on_one_cell_show_what_the_model_shows(ops in proptest::collection::vec(op(), 1..40)) {
        let mut world = World::new(false);
        for op in &ops {
            world.step(op)?;
        }
        world.finish()?;
    }

    /// The same with write-back permits: a change returns once it is in the holder's log, the
    /// other client's calls recall the permit first, and a restart (a crash: nothing is shut
    /// down) finds unsent changes in the log and sends them.
    #[test]
    fn with_write_back_permits_both_show_what_the_model_shows(ops in proptest::collection::vec(op(), 1..40)) {
        let mut world = World::new(true);
        for op in &ops {
            world.step(op)?;
        }
        world.finish()?;
    }
}
