//! The floor under any FUSE client on this machine, for the benchmark.
//!
//! `floorfs MOUNTPOINT` mounts a file system that keeps its names and attributes in memory and
//! each file's bytes in an anonymous memory file (`memfd_create`), opened in passthrough mode
//! (the kernel reads and writes that file itself, as it does venus's containers), with the same
//! capabilities, thread count and attribute lifetimes as venus. It logs nothing, caches nothing,
//! talks to no server, makes nothing durable and allocates no inode on a disk: what a benchmark
//! costs on it is what the kernel's FUSE requests for that work cost, and no FUSE client can do
//! the same work for less. bench/run measures it next to the local disk and venus, so each
//! ratio can be read against this floor.
//!
//! Not a file system to keep anything in: no hard links, symbolic links or extended attributes,
//! and everything is gone at unmount.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, Request, SessionACL, TimeOrNow,
};

/// Venus's attribute and entry lifetime for objects under a callback promise.
const TTL: Duration = Duration::from_secs(10);

struct Node {
    attr: FileAttr,
    /// A file's bytes (a memory file); none for a directory.
    data: Option<Arc<File>>,
    /// A directory's entries; empty for a file.
    entries: BTreeMap<OsString, u64>,
}

/// One backing registration per open inode, shared by its handles (the kernel wants one).
struct Open {
    backing: Arc<BackingId>,
    handles: usize,
}

#[derive(Default)]
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    open: HashMap<u64, Open>,
    /// Handle → inode.
    handles: HashMap<u64, u64>,
    next_fh: u64,
}

struct Floor {
    state: Mutex<State>,
}

fn attr(ino: u64, kind: FileType, perm: u16, req: &Request) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: req.uid(),
        gid: req.gid(),
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

/// An anonymous file in memory, readable and writable, that no name or disk holds.
fn memory_file() -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: a static NUL-terminated name; the descriptor returned is new and ours alone.
    let fd = unsafe { libc::memfd_create(c"floorfs".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a valid descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Floor {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A file's attributes with its size and times from its memory file, which the kernel
    /// writes without telling us.
    fn current(&self, node: &Node) -> FileAttr {
        let mut a = node.attr;
        if let Some(m) = node.data.as_ref().and_then(|f| f.metadata().ok()) {
            a.size = m.len();
            a.blocks = m.len().div_ceil(512);
            a.mtime = m.modified().unwrap_or(a.mtime);
        }
        a
    }

    /// Adds a new object named `name` in `parent`.
    fn add(
        &self,
        parent: INodeNo,
        name: &OsStr,
        kind: FileType,
        perm: u16,
        req: &Request,
    ) -> Result<(FileAttr, Option<Arc<File>>), Errno> {
        let data = match kind {
            FileType::RegularFile => Some(Arc::new(memory_file().map_err(|e| io_errno(&e))?)),
            _ => None,
        };
        let mut s = self.lock();
        let st = &mut *s;
        let dir = st.nodes.get(&parent.0).ok_or(Errno::ENOENT)?;
        if dir.attr.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if dir.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        st.next_ino += 1;
        let ino = st.next_ino;
        let a = attr(ino, kind, perm, req);
        st.nodes.insert(ino, Node { attr: a, data: data.clone(), entries: BTreeMap::new() });
        if let Some(dir) = st.nodes.get_mut(&parent.0) {
            dir.entries.insert(name.to_os_string(), ino);
            if kind == FileType::Directory {
                dir.attr.nlink += 1;
            }
        }
        Ok((a, data))
    }

    /// Takes `name` out of `parent`; `dir` says which kind the caller means to remove.
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut s = self.lock();
        let ino = *s.nodes.get(&parent.0).and_then(|d| d.entries.get(name)).ok_or(Errno::ENOENT)?;
        let node = s.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        match (dir, node.attr.kind == FileType::Directory) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !node.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        s.nodes.remove(&ino);
        if let Some(d) = s.nodes.get_mut(&parent.0) {
            d.entries.remove(name);
            if dir {
                d.attr.nlink -= 1;
            }
        }
        // Open handles keep the bytes (the kernel holds the memory file), as on a local disk.
        Ok(())
    }

    /// Registers `file` as `ino`'s backing (or reuses the registration its other handles
    /// hold) and returns a new handle for it.
    fn hold(
        &self,
        ino: u64,
        file: &File,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Result<(u64, Arc<BackingId>), Errno> {
        let mut s = self.lock();
        let backing = match s.open.get_mut(&ino) {
            Some(o) => {
                o.handles += 1;
                o.backing.clone()
            }
            None => {
                let b = Arc::new(register(file).map_err(|e| io_errno(&e))?);
                s.open.insert(ino, Open { backing: b.clone(), handles: 1 });
                b
            }
        };
        s.next_fh += 1;
        let fh = s.next_fh;
        s.handles.insert(fh, ino);
        Ok((fh, backing))
    }

    fn data(&self, ino: u64) -> Result<Arc<File>, Errno> {
        let s = self.lock();
        let node = s.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        node.data.clone().ok_or(Errno::EISDIR)
    }
}

impl Filesystem for Floor {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        config
            .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
            .map_err(|_| std::io::Error::other("no FUSE passthrough"))?;
        config.set_max_stack_depth(1).map_err(|_| std::io::Error::other("no FUSE passthrough"))?;
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let root = attr(1, FileType::Directory, 0o755, req);
        let mut s = self.lock();
        s.nodes.insert(1, Node { attr: root, data: None, entries: BTreeMap::new() });
        s.next_ino = 1;
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = self.lock();
        let found = s.nodes.get(&parent.0).and_then(|d| d.entries.get(name)).and_then(|i| s.nodes.get(i));
        match found {
            Some(n) => reply.entry(&TTL, &self.current(n), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().nodes.get(&ino.0) {
            Some(n) => reply.attr(&TTL, &self.current(n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Some(len) = size
            && let Err(e) = self.data(ino.0).and_then(|f| f.set_len(len).map_err(|e| io_errno(&e)))
        {
            return reply.error(e);
        }
        let when = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        let mut s = self.lock();
        let Some(n) = s.nodes.get_mut(&ino.0) else { return reply.error(Errno::ENOENT) };
        if let Some(m) = mode {
            n.attr.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            n.attr.uid = u;
        }
        if let Some(g) = gid {
            n.attr.gid = g;
        }
        if let Some(t) = atime {
            n.attr.atime = when(t);
        }
        if let Some(t) = mtime {
            n.attr.mtime = when(t);
            if let Some(f) = &n.data {
                let _ = f.set_modified(n.attr.mtime);
            }
        }
        n.attr.ctime = SystemTime::now();
        reply.attr(&TTL, &self.current(n));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.add(parent, name, FileType::Directory, (mode & !umask & 0o7777) as u16, req) {
            Ok((a, _)) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Within and across directories; a file it replaces goes, a directory it would replace
    /// must be empty. (No RENAME_EXCHANGE or RENAME_NOREPLACE: the benchmarks never ask.)
    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let mut s = self.lock();
        let Some(&ino) = s.nodes.get(&parent.0).and_then(|d| d.entries.get(name)) else {
            return reply.error(Errno::ENOENT);
        };
        if !s.nodes.get(&newparent.0).is_some_and(|d| d.attr.kind == FileType::Directory) {
            return reply.error(Errno::ENOENT);
        }
        let replaced = s.nodes.get(&newparent.0).and_then(|d| d.entries.get(newname)).copied();
        if let Some(old) = replaced.filter(|&o| o != ino) {
            if s.nodes.get(&old).is_some_and(|n| !n.entries.is_empty()) {
                return reply.error(Errno::ENOTEMPTY);
            }
            s.nodes.remove(&old);
        }
        let is_dir = s.nodes.get(&ino).is_some_and(|n| n.attr.kind == FileType::Directory);
        if let Some(d) = s.nodes.get_mut(&parent.0) {
            d.entries.remove(name);
            if is_dir {
                d.attr.nlink -= 1;
            }
        }
        if let Some(d) = s.nodes.get_mut(&newparent.0) {
            d.entries.insert(newname.to_os_string(), ino);
            if is_dir {
                d.attr.nlink += 1;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let held = self.data(ino.0).and_then(|f| self.hold(ino.0, &f, |f| reply.open_backing(f)));
        match held {
            Ok((fh, b)) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let (a, file) = match self.add(parent, name, FileType::RegularFile, (mode & !umask & 0o7777) as u16, req) {
            Ok((a, Some(file))) => (a, file),
            Ok((_, None)) => return reply.error(Errno::EIO),
            Err(e) => return reply.error(e),
        };
        match self.hold(a.ino.0, &file, |f| reply.open_backing(f)) {
            Ok((fh, b)) => reply.created_passthrough(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty(), &b),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        if let Some(ino) = s.handles.remove(&fh.0)
            && let Some(o) = s.open.get_mut(&ino)
        {
            o.handles -= 1;
            if o.handles == 0 {
                s.open.remove(&ino);
            }
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let s = self.lock();
        let Some(d) = s.nodes.get(&ino.0) else { return reply.error(Errno::ENOENT) };
        let dots = [(ino.0, FileType::Directory, OsStr::new(".")), (ino.0, FileType::Directory, OsStr::new(".."))];
        let entries = d.entries.iter().map(|(n, i)| {
            let kind = s.nodes.get(i).map_or(FileType::RegularFile, |c| c.attr.kind);
            (*i, kind, n.as_os_str())
        });
        for (k, (child, kind, name)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (k + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let s = self.lock();
        let Some(d) = s.nodes.get(&ino.0) else { return reply.error(Errno::ENOENT) };
        let dot = d.attr;
        let dots = [(OsStr::new("."), dot, Duration::ZERO), (OsStr::new(".."), dot, Duration::ZERO)];
        let entries =
            d.entries.iter().filter_map(|(n, i)| s.nodes.get(i).map(|c| (n.as_os_str(), self.current(c), TTL)));
        for (k, (name, a, ttl)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
            if reply.add(a.ino, (k + 1) as u64, name, &ttl, &a, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [mountpoint] = args.as_slice() else {
        eprintln!("usage: floorfs MOUNTPOINT");
        std::process::exit(2);
    };
    let mut cfg = Config::default();
    cfg.mount_options = vec![MountOption::FSName("floorfs".into()), MountOption::NoAtime, MountOption::AutoUnmount];
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(2);
    let fs = Floor { state: Mutex::new(State::default()) };
    fuser::mount(fs, Path::new(mountpoint), &cfg)
}
