//! Telling the kernel to forget what it cached, without venus ever waiting on the kernel.
//!
//! Why this has threads of its own: the kernel takes a directory's inode lock to drop a name in
//! it (`FUSE_NOTIFY_INVAL_ENTRY` → `fuse_reverse_inval_entry`), and it holds that same lock
//! while a create, unlink, rename or lookup in the directory waits for venus to answer. An
//! invalidation made on a thread that such an answer needs (a tokio worker) waits for the lock,
//! the request waits for the worker: the mount is wedged for good. That happened whenever a
//! callback break, a lost-promises revalidation or a reconnection touched a directory another
//! process was creating files in. So:
//!
//! - every invalidation is queued here and delivered by a dedicated thread; a caller never
//!   blocks, whatever it is answering;
//! - what that thread does never takes an inode lock: attribute and page invalidations
//!   (`FUSE_NOTIFY_INVAL_INODE`) take none, and names are made stale all at once by bumping the
//!   connection's epoch (`FUSE_NOTIFY_INC_EPOCH`, Linux 6.16+), which the kernel checks when a
//!   name is next used, with no lock either. So delivery is prompt, and a callback break can
//!   wait for it before it is acknowledged: once a writer's call returns, no kernel cache here
//!   shows the old state (DESIGN's promise), and no cycle through the server exists (another
//!   client's create waiting for our ack while we wait for our own create);
//! - on a kernel without epochs, names are dropped one by one on a second thread that may
//!   block on a directory lock; nothing waits for it (a stale name then lasts until that
//!   directory's operation ends, or at most the kernel's entry timeout).

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where invalidations go (the FUSE session).
pub trait Kernel: Send + Sync {
    /// Drops an inode's cached attributes and pages. Takes no inode lock in the kernel.
    fn inval_inode(&self, ino: u64) -> std::io::Result<()>;
    /// Drops one cached name. Takes the directory's inode lock: only ever called where nothing
    /// waits for it.
    fn inval_entry(&self, parent: u64, name: &str) -> std::io::Result<()>;
    /// Makes every cached name stale at once (the connection's epoch); `Ok(false)` when the
    /// kernel cannot.
    fn forget_all_names(&self) -> std::io::Result<bool>;
}

/// What the kernel must forget: inodes (attributes, pages) and names in directories.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forget {
    pub inodes: Vec<u64>,
    pub names: Vec<(u64, String)>,
    /// Names in these directories may have changed, whatever venus knew of them: with epochs,
    /// all names go stale; without, only `names` can be dropped.
    pub dirs: Vec<u64>,
}

impl Forget {
    pub fn inode(ino: u64) -> Self {
        Forget { inodes: vec![ino], ..Forget::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty() && self.names.is_empty() && self.dirs.is_empty()
    }

    pub fn add(&mut self, other: Forget) {
        self.inodes.extend(other.inodes);
        self.names.extend(other.names);
        self.dirs.extend(other.dirs);
    }
}

/// Resolves once a [`Forget`] reached the kernel (the lock-free part of it).
pub struct Delivered(Option<tokio::sync::oneshot::Receiver<()>>);

impl Delivered {
    /// Nothing to wait for.
    pub fn now() -> Self {
        Delivered(None)
    }

    /// Waits, at most `limit`, for delivery; says whether it happened.
    pub async fn wait(self, limit: Duration) -> bool {
        match self.0 {
            None => true,
            Some(rx) => matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(()))),
        }
    }
}

struct Job {
    forget: Forget,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The queue and the threads that deliver it. Until a kernel is connected (before the mount
/// exists, or in tests of the core), invalidations are dropped: nothing is cached yet.
pub struct Invalidator {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Default for Invalidator {
    fn default() -> Self {
        Invalidator { tx: Mutex::new(None) }
    }
}

impl Invalidator {
    /// Starts the delivery threads for `kernel`.
    pub fn connect(&self, kernel: Arc<dyn Kernel>) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (names_tx, names_rx) = mpsc::channel::<Vec<(u64, String)>>();
        {
            let kernel = kernel.clone();
            std::thread::Builder::new()
                .name("venus-inval".into())
                .spawn(move || deliver(kernel.as_ref(), &rx, &names_tx))?;
        }
        std::thread::Builder::new().name("venus-names".into()).spawn(move || drop_names(kernel.as_ref(), &names_rx))?;
        *self.tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Ok(())
    }

    /// Queues `forget`; returns at once. The result resolves when it has reached the kernel.
    pub fn forget(&self, forget: Forget) -> Delivered {
        if forget.is_empty() {
            return Delivered(None);
        }
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else { return Delivered(None) };
        let (done, rx) = tokio::sync::oneshot::channel();
        match tx.send(Job { forget, done: Some(done) }) {
            Ok(()) => Delivered(Some(rx)),
            // The delivery thread is gone (the session ended): nothing left to invalidate.
            Err(_) => Delivered(None),
        }
    }
}

/// The delivery thread: takes every queued job at once (a storm of breaks costs one epoch bump),
/// delivers the inode invalidations, then the names, then says so.
fn deliver(kernel: &dyn Kernel, rx: &mpsc::Receiver<Job>, names_tx: &mpsc::Sender<Vec<(u64, String)>>) {
    let mut epochs = true;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let mut inodes = BTreeSet::new();
        let mut names = Vec::new();
        let mut dirs = false;
        let mut done = Vec::new();
        for job in jobs {
            inodes.extend(job.forget.inodes);
            names.extend(job.forget.names);
            dirs |= !job.forget.dirs.is_empty();
            done.extend(job.done);
        }
        for ino in inodes {
            // ENOENT (the kernel has no such inode cached) is not an error for an invalidation.
            if let Err(e) = kernel.inval_inode(ino)
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                tracing::debug!(ino, error = %e, "inode invalidation refused");
            }
        }
        if (dirs || !names.is_empty()) && epochs {
            match kernel.forget_all_names() {
                Ok(true) => names.clear(),
                Ok(false) => epochs = false,
                Err(e) => {
                    tracing::info!(error = %e, "the kernel cannot make names stale at once; dropping them one by one");
                    epochs = false;
                }
            }
        }
        if !names.is_empty() {
            let _ = names_tx.send(names);
        }
        for d in done {
            let _ = d.send(());
        }
    }
}

/// The fallback for kernels without epochs: one name at a time, on a thread nothing waits for.
fn drop_names(kernel: &dyn Kernel, rx: &mpsc::Receiver<Vec<(u64, String)>>) {
    while let Ok(first) = rx.recv() {
        let mut all: BTreeSet<(u64, String)> = first.into_iter().collect();
        for more in rx.try_iter() {
            all.extend(more);
        }
        for (parent, name) in all {
            if let Err(e) = kernel.inval_entry(parent, &name)
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                tracing::debug!(parent, name, error = %e, "name invalidation refused");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A kernel whose entry invalidations block until released (as a directory lock held by a
    /// pending create would), recording what it was told.
    #[derive(Default)]
    struct Recorder {
        epochs: bool,
        blocked: AtomicBool,
        log: Mutex<Vec<String>>,
    }

    impl Kernel for Recorder {
        fn inval_inode(&self, ino: u64) -> std::io::Result<()> {
            self.log.lock().unwrap().push(format!("inode {ino}"));
            Ok(())
        }
        fn inval_entry(&self, parent: u64, name: &str) -> std::io::Result<()> {
            while self.blocked.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.log.lock().unwrap().push(format!("entry {parent}/{name}"));
            Ok(())
        }
        fn forget_all_names(&self) -> std::io::Result<bool> {
            if self.epochs {
                self.log.lock().unwrap().push("epoch".into());
            }
            Ok(self.epochs)
        }
    }

    fn forget() -> Forget {
        Forget { inodes: vec![7, 7, 8], names: vec![(7, "a".into()), (7, "b".into())], dirs: vec![7] }
    }

    #[tokio::test]
    async fn delivery_never_waits_for_a_blocked_directory() {
        let k = Arc::new(Recorder { epochs: false, blocked: AtomicBool::new(true), ..Recorder::default() });
        let inv = Invalidator::default();
        inv.connect(k.clone()).unwrap();
        // Names are stuck behind a "directory lock"; the inodes are delivered all the same.
        assert!(inv.forget(forget()).wait(Duration::from_secs(10)).await);
        assert_eq!(*k.log.lock().unwrap(), ["inode 7", "inode 8"]);
        k.blocked.store(false, Ordering::SeqCst);
        for _ in 0..1000 {
            if k.log.lock().unwrap().len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(k.log.lock().unwrap()[2..], ["entry 7/a", "entry 7/b"]);
    }

    #[tokio::test]
    async fn with_epochs_names_cost_one_bump_and_no_lock() {
        let k = Arc::new(Recorder { epochs: true, blocked: AtomicBool::new(true), ..Recorder::default() });
        let inv = Invalidator::default();
        inv.connect(k.clone()).unwrap();
        assert!(inv.forget(forget()).wait(Duration::from_secs(10)).await);
        let dir_only = Forget { dirs: vec![9], ..Forget::default() };
        assert!(inv.forget(dir_only).wait(Duration::from_secs(10)).await);
        let log = k.log.lock().unwrap().clone();
        assert_eq!(log, ["inode 7", "inode 8", "epoch", "epoch"]);
    }

    #[tokio::test]
    async fn without_a_kernel_nothing_waits() {
        let inv = Invalidator::default();
        assert!(inv.forget(forget()).wait(Duration::from_millis(1)).await);
    }
}
