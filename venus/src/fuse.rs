//! The FUSE adapter: unpacks kernel requests, calls the core (`crate::fs::Venus`) on the tokio
//! runtime, and replies. Nothing interesting happens here; that is the point.
//!
//! Cached files are opened with kernel passthrough where the kernel allows it: reads and writes
//! then go straight to the container file and never enter venus. The kernel allows one backing
//! file per inode at a time, so a backing id is shared by every open of an inode; an open that
//! finds an older version of the file still open is served by venus itself instead.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use proto::{NodeKind, ObjectKind, Timestamp};

use crate::error::VenusError;
use crate::fs::{SetAttrRequest, Stat, Venus};
use crate::ids::GFid;

/// How long the kernel may trust attributes and names without asking. Breaks invalidate
/// earlier; this bounds what a missed invalidation could cost.
const TTL: Duration = Duration::from_secs(10);

pub struct VenusFs {
    core: Arc<Venus>,
    rt: tokio::runtime::Handle,
    pt: Arc<Passthrough>,
}

#[derive(Default)]
struct Passthrough {
    enabled: AtomicBool,
    /// The backing file of each inode while any handle has it open, and the container inode it
    /// was made from.
    by_object: Mutex<HashMap<GFid, (Weak<BackingId>, u64)>>,
    by_handle: Mutex<HashMap<u64, Arc<BackingId>>>,
}

impl Passthrough {
    fn backing(
        &self,
        g: GFid,
        file: &std::fs::File,
        open: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let container = file.metadata().ok()?.ino();
        let mut map = self.by_object.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((weak, ino)) = map.get(&g)
            && let Some(live) = weak.upgrade()
        {
            // Same version: share it. Another version open: venus serves this open itself.
            return (*ino == container).then_some(live);
        }
        match open(file) {
            Ok(b) => {
                let b = Arc::new(b);
                map.insert(g, (Arc::downgrade(&b), container));
                Some(b)
            }
            Err(e) => {
                tracing::warn!(error = %e, "kernel passthrough unavailable; venus serves reads and writes itself");
                self.enabled.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    fn hold(&self, fh: u64, b: Arc<BackingId>) {
        self.by_handle.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, b);
    }

    fn release(&self, fh: u64) {
        self.by_handle.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh);
    }
}

impl VenusFs {
    pub fn new(core: Arc<Venus>, rt: tokio::runtime::Handle) -> Self {
        VenusFs { core, rt, pt: Arc::new(Passthrough::default()) }
    }

    /// Runs a request's work as the local user who made it (see `fs::user`).
    fn spawn(&self, req: &Request, f: impl Future<Output = ()> + Send + 'static) {
        self.rt.spawn(crate::user::as_user(req.uid(), f));
    }

    /// As `spawn`, for requests the cache usually answers on its own (lookups, attributes,
    /// opens of cached files, listings): the work starts right here on the FUSE thread, and
    /// only if it has to wait (for the network, a lock) does it move to the runtime. A cache
    /// hit then costs no hand-over between threads. Not for work that may compute at length
    /// before its first wait (a store): that would hold up every other request.
    fn run_or_spawn(&self, req: &Request, f: impl Future<Output = ()> + Send + 'static) {
        let mut task = Box::pin(crate::user::as_user(req.uid(), f));
        let ready = {
            let _runtime = self.rt.enter();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            task.as_mut().poll(&mut cx).is_ready()
        };
        if !ready {
            // Polled again at once by the runtime, which registers its own waker.
            self.rt.spawn(task);
        }
    }
}

fn errno(e: &VenusError) -> Errno {
    if e.is_expected() {
        tracing::debug!(error = %e, "request failed");
    } else {
        tracing::warn!(error = %e, "request failed");
    }
    Errno::from_i32(e.to_errno())
}

fn file_type(kind: ObjectKind) -> FileType {
    match kind {
        ObjectKind::File => FileType::RegularFile,
        ObjectKind::Directory | ObjectKind::MountPoint => FileType::Directory,
        ObjectKind::Symlink => FileType::Symlink,
        ObjectKind::Fifo => FileType::NamedPipe,
        ObjectKind::Socket => FileType::Socket,
    }
}

/// How long the kernel may keep what it learned. Its caches do not know who is asking, so only
/// what anyone may look up is cached; the rest is asked again each time, with the asker's rights.
fn ttl(st: &Stat) -> Duration {
    if st.public { TTL } else { Duration::ZERO }
}

/// Attributes standing in for ones venus does not have: only the inode and its kind.
fn placeholder(ino: u64, kind: ObjectKind) -> Stat {
    Stat {
        ino,
        kind,
        size: 0,
        mode: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        mtime: proto::Timestamp::default(),
        ctime: proto::Timestamp::default(),
        public: false,
    }
}

fn file_attr(st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.ino),
        size: st.size,
        blocks: st.size.div_ceil(512),
        atime: st.mtime.to_system(),
        mtime: st.mtime.to_system(),
        ctime: st.ctime.to_system(),
        crtime: st.ctime.to_system(),
        kind: file_type(st.kind),
        perm: (st.mode & 0o7777) as u16,
        nlink: st.nlink,
        uid: st.uid,
        gid: st.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// A name from the kernel. One too long for any directory is `ENAMETOOLONG` for every call, a
/// lookup included (the kernel leaves the check to the file system).
fn name_str(name: &OsStr) -> Result<String, Errno> {
    if name.len() > proto::name::MAX_NAME_LEN {
        return Err(Errno::ENAMETOOLONG);
    }
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

fn time(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::SpecificTime(t) => Timestamp::from_system(t),
        TimeOrNow::Now => Timestamp::now(),
    }
}

impl Filesystem for VenusFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(1).is_ok() {
            self.pt.enabled.store(true, Ordering::Relaxed);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Listings carry attributes (one bulk status request per directory instead of a lookup
        // per entry); the kernel uses them when lookups follow a listing.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let core = self.core.clone();
        self.run_or_spawn(req, async move {
            match core.lookup(parent.0, &name).await {
                Ok(st) => reply.entry(&ttl(&st), &file_attr(&st), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let core = self.core.clone();
        self.run_or_spawn(req, async move {
            match core.getattr(ino.0).await {
                Ok(st) => reply.attr(&ttl(&st), &file_attr(&st)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let core = self.core.clone();
        let caller = crate::fs::Caller { uid: req.uid(), gid: req.gid(), pid: req.pid() };
        let set = SetAttrRequest { mode: mode.map(|m| m & 0o7777), uid, gid, size, mtime: mtime.map(time), caller };
        self.spawn(req, async move {
            match core.setattr(ino.0, set).await {
                Ok(st) => reply.attr(&ttl(&st), &file_attr(&st)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let core = self.core.clone();
        self.run_or_spawn(req, async move {
            match core.readlink(ino.0).await {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (core, uid, gid) = (self.core.clone(), req.uid(), req.gid());
        self.spawn(req, async move {
            match core.mkdir(parent.0, &name, mode & !umask & 0o7777, uid, gid).await {
                Ok(st) => reply.entry(&ttl(&st), &file_attr(&st), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let core = self.core.clone();
        self.spawn(req, async move {
            match core.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let core = self.core.clone();
        self.spawn(req, async move {
            match core.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (name, target) = match (name_str(link_name), target.to_str()) {
            (Ok(n), Some(t)) => (n, t.to_string()),
            _ => return reply.error(Errno::EINVAL),
        };
        let (core, uid, gid) = (self.core.clone(), req.uid(), req.gid());
        self.spawn(req, async move {
            match core.symlink(parent.0, &name, &target, uid, gid).await {
                Ok(st) => reply.entry(&ttl(&st), &file_attr(&st), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// Named pipes and sockets are stored as names with attributes (the pipe or socket itself
    /// lives in this kernel); `mknod` of a regular file makes an empty one; device nodes are
    /// refused: the mount is `nodev`.
    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let perm = mode & !umask & 0o7777;
        let kind = match mode & libc::S_IFMT {
            libc::S_IFIFO => Some(NodeKind::Fifo),
            libc::S_IFSOCK => Some(NodeKind::Socket),
            // `mknod(path, S_IFREG)`, or no type at all, as POSIX allows.
            0 | libc::S_IFREG => None,
            libc::S_IFCHR | libc::S_IFBLK => return reply.error(Errno::EPERM),
            _ => return reply.error(Errno::EINVAL),
        };
        let (core, uid, gid) = (self.core.clone(), req.uid(), req.gid());
        self.spawn(req, async move {
            let made = match kind {
                Some(kind) => core.mknod(parent.0, &name, kind, perm, uid, gid).await,
                None => core.make_file(parent.0, &name, perm, uid, gid).await,
            };
            match made {
                Ok(st) => reply.entry(&ttl(&st), &file_attr(&st), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = match (name_str(name), name_str(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return reply.error(Errno::EINVAL),
        };
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let core = self.core.clone();
        self.spawn(req, async move {
            match core.rename(parent.0, &name, newparent.0, &newname, no_replace).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let name = match name_str(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let core = self.core.clone();
        self.spawn(req, async move {
            match core.link(ino.0, newparent.0, &name).await {
                Ok(st) => reply.entry(&ttl(&st), &file_attr(&st), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (core, pt) = (self.core.clone(), self.pt.clone());
        self.run_or_spawn(req, async move {
            match core.open(ino.0, flags.0).await {
                Ok((fh, h)) => {
                    // Closing a file opened for reading stores nothing: the kernel need not ask.
                    let open_flags = if h.writable { FopenFlags::empty() } else { FopenFlags::FOPEN_NOFLUSH };
                    // A file still coming in is read through venus, which knows what is in.
                    if h.stream.is_some() {
                        return reply.opened(FileHandle(fh), open_flags);
                    }
                    match pt.backing(h.gfid, &h.file, |f| reply.open_backing(f)) {
                        Some(b) => {
                            reply.opened_passthrough(FileHandle(fh), open_flags, &b);
                            pt.hold(fh, b);
                        }
                        None => reply.opened(FileHandle(fh), open_flags),
                    }
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.core.read_now(fh.0, offset, size) {
            Some(Ok(data)) => reply.data(&data),
            Some(Err(e)) => reply.error(errno(&e)),
            None => {
                // A file still coming in: this read waits for its bytes, off the FUSE thread.
                let core = self.core.clone();
                self.spawn(req, async move {
                    match core.read_when_in(fh.0, offset, size).await {
                        Ok(data) => reply.data(&data),
                        Err(e) => reply.error(errno(&e)),
                    }
                });
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.core.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        // Closing a file opened for reading stores nothing.
        if self.core.handle(fh.0).is_ok_and(|h| !h.writable) {
            return reply.ok();
        }
        let core = self.core.clone();
        // Under a write-back permit (or offline) a small file's close is logged without a wait;
        // connected, or for a big file, the work moves to the runtime at its first wait.
        self.run_or_spawn(req, async move {
            match core.flush(fh.0).await {
                // Someone is still writing through another descriptor: their close stores it.
                Ok(()) | Err(VenusError::ChangedDuringStore) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.pt.release(fh.0);
        reply.ok();
        let core = self.core.clone();
        if self.core.handle(fh.0).is_ok_and(|h| !h.writable) {
            self.run_or_spawn(req, async move { core.release(fh.0).await });
        } else {
            self.spawn(req, async move { core.release(fh.0).await });
        }
    }

    fn fsync(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let core = self.core.clone();
        self.spawn(req, async move {
            match core.fsync(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let core = self.core.clone();
        self.spawn(req, async move {
            match core.fsync_dir(ino.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let core = self.core.clone();
        self.run_or_spawn(req, async move {
            let entries = match core.readdir(ino.0).await {
                Ok(e) => e,
                Err(e) => return reply.error(errno(&e)),
            };
            let dots =
                [(ino.0, ObjectKind::Directory, ".".to_string()), (ino.0, ObjectKind::Directory, "..".to_string())];
            for (i, (child, kind, name)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
                if reply.add(INodeNo(child), (i + 1) as u64, file_type(kind), &name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let core = self.core.clone();
        self.run_or_spawn(req, async move {
            let entries = match core.readdir_plus(ino.0).await {
                Ok(e) => e,
                Err(e) => return reply.error(errno(&e)),
            };
            // The kernel takes nothing from the attributes of `.` and `..`.
            let dot = placeholder(ino.0, ObjectKind::Directory);
            let dots = [(".".to_string(), dot.clone(), Duration::ZERO), ("..".to_string(), dot, Duration::ZERO)];
            let all = dots.into_iter().chain(entries.into_iter().map(|(name, kind, ino, st)| match st {
                Some(st) => {
                    let valid = ttl(&st);
                    (name, st, valid)
                }
                // Without attributes, the kernel gets the kind and must ask again before use.
                None => (name, placeholder(ino, kind), Duration::ZERO),
            }));
            for (i, (name, st, valid)) in all.enumerate().skip(offset as usize) {
                if reply.add(INodeNo(st.ino), (i + 1) as u64, &name, &valid, &file_attr(&st), Generation(0)) {
                    break;
                }
            }
            reply.ok();
        });
    }

    /// `fallocate(2)` on an open file: done to its container (space reserved, size extended
    /// unless `FALLOC_FL_KEEP_SIZE`, holes punched...), and stored at close like a write.
    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.core.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// No ioctls: refused here at once (`isatty` asks on every `open` in some languages, and
    /// fuser's default would log a warning each time); the caller sees `ENOTTY`.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// `df`: the room in the path's volume (its quota and use), not the cache's.
    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let core = self.core.clone();
        self.run_or_spawn(req, async move {
            match core.statfs(ino.0).await {
                Ok(s) => {
                    let name_max = proto::name::MAX_NAME_LEN as u32;
                    reply.statfs(s.blocks, s.free, s.free, s.files, s.files_free, s.block_size, name_max, s.block_size)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if name != STATE_XATTR {
            return reply.error(Errno::ENODATA);
        }
        let value = self.core.object_state(ino.0).as_bytes();
        xattr_reply(reply, size, value);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut names = STATE_XATTR.as_bytes().to_vec();
        names.push(0);
        xattr_reply(reply, size, &names);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let core = self.core.clone();
        self.run_or_spawn(req, async move {
            match core.access(ino.0, mask.bits()).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (core, pt, uid, gid) = (self.core.clone(), self.pt.clone(), req.uid(), req.gid());
        // Under a write-back permit (or offline) a create is logged without a wait.
        self.run_or_spawn(req, async move {
            match core.create(parent.0, &name, mode & !umask & 0o7777, uid, gid, flags).await {
                Ok((st, fh, h)) => {
                    let attr = file_attr(&st);
                    match pt.backing(h.gfid, &h.file, |f| reply.open_backing(f)) {
                        Some(b) => {
                            reply.created_passthrough(
                                &ttl(&st),
                                &attr,
                                Generation(0),
                                FileHandle(fh),
                                FopenFlags::empty(),
                                &b,
                            );
                            pt.hold(fh, b);
                        }
                        None => reply.created(&ttl(&st), &attr, Generation(0), FileHandle(fh), FopenFlags::empty()),
                    }
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

/// The extended attribute that tells a file's state: cached, dirty, pending, conflict.
const STATE_XATTR: &str = "user.afs.state";

/// The xattr protocol: a zero size asks for the length; a too-small buffer is ERANGE.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// Delivers the core's invalidations to the kernel (from `crate::kernel`'s threads only).
pub struct NotifierKernel {
    notifier: fuser::Notifier,
    /// The session's `/dev/fuse` descriptor (a duplicate), for the notification fuser does not
    /// know: `FUSE_NOTIFY_INC_EPOCH`.
    device: std::os::fd::OwnedFd,
}

impl NotifierKernel {
    pub fn new(notifier: fuser::Notifier, device: std::os::fd::OwnedFd) -> Self {
        NotifierKernel { notifier, device }
    }
}

/// `FUSE_NOTIFY_INC_EPOCH` (protocol 7.44, Linux 6.16): every dentry older than the new epoch
/// is looked up again at its next use. No payload, no lock.
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;

impl crate::kernel::Kernel for NotifierKernel {
    fn inval_inode(&self, ino: u64) -> std::io::Result<()> {
        self.notifier.inval_inode(INodeNo(ino), 0, 0)
    }

    fn inval_entry(&self, parent: u64, name: &str) -> std::io::Result<()> {
        self.notifier.inval_entry(INodeNo(parent), OsStr::new(name))
    }

    fn forget_all_names(&self) -> std::io::Result<bool> {
        use std::os::fd::AsRawFd;
        // struct fuse_out_header { u32 len; i32 error (the notify code); u64 unique (0) }.
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&16u32.to_ne_bytes());
        header[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
        // SAFETY: a valid descriptor we own and a buffer of the length passed.
        let n = unsafe { libc::write(self.device.as_raw_fd(), header.as_ptr().cast(), header.len()) };
        if n == header.len() as isize {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        // An older kernel does not know the code.
        if e.raw_os_error() == Some(libc::EINVAL) { Ok(false) } else { Err(e) }
    }
}
