//! Running a mount: build the core, mount FUSE, serve the control socket, and stop cleanly on
//! SIGINT/SIGTERM, `venus unmount`, or an unmount from outside.
//!
//! Under systemd (`Type=notify`), `READY=1` goes to `$NOTIFY_SOCKET` once the FUSE session
//! serves the mount and the control socket is bound (what `venus mount --background` waits
//! for too), and `STOPPING=1` when unmounting begins; without it, nothing is sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fuser::{MountOption, SessionACL};

use crate::control;
use crate::fs::{Config, Venus};
use crate::fuse::{NotifierKernel, VenusFs};

/// How often venus checks on unreachable servers and pending changes.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a clean stop waits for what write-back permits hold to reach the server (inside
/// the systemd unit's `TimeoutStopSec=30s`).
const SEND_AT_STOP: Duration = Duration::from_secs(20);

pub struct MountOptions {
    pub config: Config,
    pub mountpoint: PathBuf,
    /// Time between periodic hoard walks while connected.
    pub hoard_interval: Duration,
    /// A TCP address to answer Prometheus scrapes on (`--metrics`).
    pub metrics: Option<String>,
}

fn have_fusermount3() -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()))
}

/// Mounts and serves until told to stop. Returns once unmounted.
pub fn run(opts: MountOptions) -> Result<()> {
    let mountpoint = std::fs::canonicalize(&opts.mountpoint)
        .with_context(|| format!("mount point {} must be an existing directory", opts.mountpoint.display()))?;
    if !std::path::Path::new("/dev/fuse").exists() {
        anyhow::bail!("/dev/fuse is missing: load the fuse module (modprobe fuse) or run where FUSE is available");
    }
    // Everything venus writes (containers, its databases) is its own: served only through the
    // ACL checks, never read directly by other local users.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut opts = opts;
    opts.config.mountpoint = mountpoint.clone();
    let cache_dir = opts.config.cache_dir.clone();
    // QUIC endpoints bind their sockets on the runtime.
    let _entered = rt.enter();
    let metrics = match &opts.metrics {
        Some(a) => {
            Some(rt.block_on(tokio::net::TcpListener::bind(a)).with_context(|| format!("binding --metrics {a}"))?)
        }
        None => None,
    };
    let core = Venus::new(opts.config).context("starting the cache manager")?;
    let control_socket = control::listen(&cache_dir)
        .with_context(|| format!("binding the control socket in {}", cache_dir.display()))?;
    if let Some(listener) = metrics {
        tracing::info!(addr = ?listener.local_addr().ok(), "metrics at /metrics");
        rt.spawn(crate::metrics::serve(core.clone(), listener));
    }

    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(format!("venus:{}", cache_dir.display())),
        MountOption::Subtype("venus".into()),
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // Everyone may use a system-wide mount. Venus checks every request against the ACLs with
        // the rights of the user who made it (no default_permissions: mode bits are not ACLs).
        cfg.acl = SessionACL::All;
        if have_fusermount3() {
            // The mount goes away by itself if venus is killed.
            cfg.mount_options.push(MountOption::AutoUnmount);
        } else {
            tracing::warn!("fusermount3 not found (Debian package fuse3): a killed venus leaves a stale mount");
        }
    } else {
        cfg.acl = SessionACL::Owner;
    }
    cfg.n_threads = Some(2);
    let session = fuser::Session::new(VenusFs::new(core.clone(), rt.handle().clone()), &mountpoint, &cfg)
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;

    let device = std::os::fd::AsFd::as_fd(&session).try_clone_to_owned().context("duplicating /dev/fuse")?;
    core.set_kernel(Arc::new(NotifierKernel::new(session.notifier(), device)))
        .context("starting the invalidation threads")?;

    let stop = Arc::new(tokio::sync::Notify::new());
    {
        let (core, mp, stop) = (core.clone(), mountpoint.clone(), stop.clone());
        rt.spawn(async move {
            if let Err(e) = control::serve(control_socket, core, mp, stop).await {
                tracing::error!(error = %e, "control socket failed");
            }
        });
    }
    let background = session.spawn().context("starting the FUSE session")?;
    let hoard_interval = opts.hoard_interval;
    let _watcher = watch_profiles(&core);
    rt.spawn(core.clone().write_back());
    {
        // What the cache holds is trusted again after one volume-stamp check per cell; then a
        // heartbeat watches for servers coming back and drains the modification log.
        let core = core.clone();
        rt.spawn(async move {
            core.revalidate_all().await;
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                core.tick().await;
                core.maybe_walk(hoard_interval).await;
            }
        });
    }
    tracing::info!(mountpoint = %mountpoint.display(), cache = %cache_dir.display(), "venus mounted");
    notify_service_manager(sd_notify::NotifyState::Ready);

    let externally_unmounted = rt.block_on(wait_for_stop(stop, mountpoint.clone(), cache_dir.clone()));
    notify_service_manager(sd_notify::NotifyState::Stopping);
    if externally_unmounted {
        tracing::info!("unmounted from outside; exiting");
        drop(background);
    } else {
        tracing::info!("unmounting");
        // Unmount first ourselves: fusermount3's auto-unmount is there for a killed venus, and
        // once the kernel drops the mount the session threads see the device close and end.
        if let Err(e) = unmount(&mountpoint) {
            tracing::warn!(error = %e, "unmount failed; detaching lazily");
            let _ = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(&mountpoint).status();
        }
        if let Err(e) = background.umount_and_join() {
            tracing::warn!(error = %e, "FUSE session ended with an error");
        }
    }
    let _ = std::fs::remove_file(cache_dir.join(control::SOCKET));
    // Changes waiting under write-back permits go now and the permits go back, so another
    // client need not wait for their leases; bounded: what cannot go stays in the log and is
    // sent at the next mount.
    if rt.block_on(tokio::time::timeout(SEND_AT_STOP, core.give_back_all())).is_err() {
        tracing::warn!(
            records = core.cml.total_records().unwrap_or(0),
            "changes made under write-back permits not all sent; they stay in the log for the next mount"
        );
    }
    // Say goodbye to the servers, so they stop holding promises for us at once instead of
    // waiting for the connection to time out (a writer would wait for our ack meanwhile).
    rt.block_on(core.close_connections());
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Tells systemd how the mount is doing (a no-op when `$NOTIFY_SOCKET` is unset). A failure is
/// logged, not fatal: the mount works the same, only the service manager is not told.
fn notify_service_manager(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(&state)) {
        tracing::warn!(error = %e, ?state, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}

/// Watches the hoard profile directory; every change re-reads the profiles (editors replace
/// files by rename, so the directory is watched, not the files).
fn watch_profiles(core: &Arc<Venus>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = core.hoarding.profile_dir().to_path_buf();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the hoard profile directory");
        return None;
    }
    let weak = Arc::downgrade(core);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Not reads: reloading reads the profiles, and on inotify a read is an event (a loop).
        let relevant = event.is_ok_and(|e| {
            !e.kind.is_access()
                && !e.kind.is_other()
                && e.paths.iter().any(|p| p.extension().is_some_and(|x| x == "hoard"))
        });
        if relevant && let Some(core) = weak.upgrade() {
            core.hoarding.reload_profiles();
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch hoard profiles"))
    .ok()?;
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch hoard profiles");
        return None;
    }
    Some(watcher)
}

/// Unmounts `mountpoint`: directly as root, through `fusermount3 -u` otherwise.
fn unmount(mountpoint: &std::path::Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; umount2 has no other preconditions.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let status = std::process::Command::new("fusermount3").arg("-u").arg(mountpoint).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(anyhow::anyhow!("unmounting {}: {err}", mountpoint.display())),
    }
}

/// Waits for a signal, `venus unmount`, or the mount vanishing. True in the last case.
async fn wait_for_stop(stop: Arc<tokio::sync::Notify>, mountpoint: PathBuf, cache: PathBuf) -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        stop.notified().await;
        return false;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => return false,
            _ = int.recv() => return false,
            _ = stop.notified() => return false,
            _ = tick.tick() => {
                let mounted = crate::mounts::venus_mounts().iter().any(|m| m.mountpoint == mountpoint && m.cache == cache);
                if !mounted {
                    return true;
                }
            }
        }
    }
}
