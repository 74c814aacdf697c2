//! Harness for end-to-end tests: real `vice` processes on 127.0.0.1 and a test client built from
//! `proto`. Readiness is polled, never slept for; every process is killed when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proto::cell::CellFile;
use proto::client::{Connector, Session};
use proto::msg::Push;
use proto::tls::{Identity, TransportTuning};
use proto::*;

pub mod etcd;
pub mod faults;
pub use faults::{
    BODY_THREAD, DirStats, Direction, Host, Impairment, LossyProxy, TestNetwork, ThreadInfo, TmpFs, Watchdog, Watched,
    abort_fuse, fuse_connection, stacks, threads, threads_in_fuse, threads_in_state, threads_stuck_in, with_watchdog,
    with_watchdog_async,
};

/// Path of a workspace binary, built by `cargo build --bins` (the test script does it).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which scripts/test does)",
        path.display()
    );
    path
}

/// A free UDP port on loopback (the OS picks one; tiny race, acceptable in tests).
pub fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

/// Whether the cell's first server answers a Hello. Runs on its own thread with its own runtime,
/// because callers may be inside a tokio runtime already.
pub fn probe(cell: &CellFile) -> bool {
    let server = cell.servers[0].clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return false;
        };
        rt.block_on(async {
            let Ok(c) = Connector::new(None, TransportTuning::default()) else {
                return false;
            };
            match c.connect(&server, ClientId::random(), Duration::from_millis(500)).await {
                Ok(s) => {
                    s.close();
                    true
                }
                Err(_) => false,
            }
        })
    })
    .join()
    .unwrap_or(false)
}

/// Whether a child we started is alive; a dead one's pid is cleared from `live` (what
/// `Watched` reads at report time).
fn child_alive(child: &mut Option<Child>, live: &AtomicU32) -> bool {
    let alive = child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
    if !alive {
        live.store(0, Ordering::Relaxed);
    }
    alive
}

/// SIGTERM a child we started and wait (bounded) for it to exit; whether it exited cleanly.
fn terminate(mut c: Child, what: &str, log: impl Fn() -> String) -> Result<bool> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = c.try_wait()? {
            return Ok(status.success());
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            bail!("{what} did not stop within 20 s of SIGTERM:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One vice server with its own data directory.
pub struct Vice {
    /// Scratch space for the test (logs, dumps, password files); holds the data directory too
    /// unless the server was started with `start_in`.
    pub dir: tempfile::TempDir,
    pub addr: String,
    data: PathBuf,
    /// The directory made under `start_in`'s parent, removed with the server.
    _data_parent: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// The running child's pid (0: none), shared with `Watched` so a watchdog names the current
    /// process even after restarts.
    live: Arc<AtomicU32>,
    log: PathBuf,
    /// More arguments of `vice serve` (`--metrics ADDR`), kept for restarts.
    serve_args: Vec<String>,
    /// More environment of `vice serve`, kept for restarts.
    env: Vec<(String, String)>,
    /// The test-network host it runs on (None: the test's own network, on 127.0.0.1).
    host: Option<Host>,
}

/// A workspace program, run on `host` if there is one.
fn program(host: Option<&Host>, name: &str) -> Command {
    match host {
        Some(h) => h.command(&bin(name)),
        None => Command::new(bin(name)),
    }
}

/// Where a server listens: a free port on loopback, or a fixed one at a test-network host's
/// address (the namespace is the server's own).
fn listen_address(host: Option<&Host>) -> String {
    match host {
        Some(h) => format!("{}:7000", h.ip),
        None => format!("127.0.0.1:{}", free_port()),
    }
}

impl Vice {
    /// `vice init` a new cell and start serving it.
    pub fn start(cell: &str) -> Result<Vice> {
        Self::init_and_serve(cell, None, &[])
    }

    /// As `start`, with more arguments for `vice serve`.
    pub fn start_with(cell: &str, serve_args: &[&str]) -> Result<Vice> {
        Self::init_and_serve(cell, None, serve_args)
    }

    /// As `start`, with the data directory (SQLite, chunks) in a new directory under `parent`,
    /// a small file system say; the log stays elsewhere so it survives that disk filling up.
    pub fn start_in(cell: &str, parent: &Path) -> Result<Vice> {
        Self::init_and_serve(cell, Some(parent), &[])
    }

    /// As `start`, with the cell database at `cell_db` (`etcd://...`).
    pub fn start_on_cell_db(cell: &str, cell_db: &str) -> Result<Vice> {
        Self::init_with(cell, None, &["--cell-db", cell_db], &[], None)
    }

    /// As `start`, on a host of a `TestNetwork`.
    pub fn start_on(cell: &str, host: &Host) -> Result<Vice> {
        Self::init_with(cell, None, &[], &[], Some(host))
    }

    fn init_and_serve(cell: &str, parent: Option<&Path>, serve_args: &[&str]) -> Result<Vice> {
        Self::init_with(cell, parent, &[], serve_args, None)
    }

    fn init_with(
        cell: &str,
        parent: Option<&Path>,
        init_args: &[&str],
        serve_args: &[&str],
        host: Option<&Host>,
    ) -> Result<Vice> {
        let dir = tempfile::tempdir()?;
        let addr = listen_address(host);
        let data_parent = match parent {
            Some(p) => Some(
                tempfile::Builder::new()
                    .prefix("vice-")
                    .tempdir_in(p)
                    .with_context(|| format!("making vice's data directory under {}", p.display()))?,
            ),
            None => None,
        };
        let data = data_parent.as_ref().map_or(dir.path(), |d| d.path()).join("data");
        let out = program(host, "vice")
            .args(["init", "--cell", cell, "--data"])
            .arg(&data)
            .args(["--listen", &addr])
            .args(init_args)
            .output()?;
        if !out.status.success() {
            bail!("vice init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let log = dir.path().join("vice.log");
        let serve_args = serve_args.iter().map(|s| s.to_string()).collect();
        let mut v = Vice {
            dir,
            addr,
            data,
            _data_parent: data_parent,
            child: None,
            live: Default::default(),
            log,
            serve_args,
            env: vec![],
            host: host.cloned(),
        };
        v.spawn()?;
        Ok(v)
    }

    /// Another server for `db`'s cell: `vice init --join`, then serving. Its data directory
    /// gets a copy of the cell admin's credential and password, for the tests' `vos`.
    pub fn join(db: &Vice) -> Result<Vice> {
        let cred = db.admin_cred_path().display().to_string();
        Self::join_with(db, &["--admin-cred", &cred], None)
    }

    /// As `join`, on a host of a `TestNetwork`.
    pub fn join_on(db: &Vice, host: &Host) -> Result<Vice> {
        let cred = db.admin_cred_path().display().to_string();
        Self::join_with(db, &["--admin-cred", &cred], Some(host))
    }

    /// Another server for `first`'s cell, joined through the cell database at `cell_db`
    /// (`vice init --join CELLFILE --cell-db URL`: no other server needs to be up).
    pub fn join_cell_db(first: &Vice, cell_db: &str) -> Result<Vice> {
        Self::join_with(first, &["--cell-db", cell_db], None)
    }

    fn join_with(db: &Vice, init_args: &[&str], host: Option<&Host>) -> Result<Vice> {
        let dir = tempfile::tempdir()?;
        let addr = listen_address(host);
        let data = dir.path().join("data");
        let out = program(host, "vice")
            .args(["init", "--join"])
            .arg(db.cell_file_path())
            .arg("--data")
            .arg(&data)
            .args(["--listen", &addr])
            .args(init_args)
            .output()?;
        if !out.status.success() {
            bail!("vice init --join failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::copy(db.admin_cred_path(), data.join("admin.cred"))?;
        std::fs::copy(db.data().join("admin.password"), data.join("admin.password"))?;
        let log = dir.path().join("vice.log");
        let mut v = Vice {
            dir,
            addr,
            data,
            _data_parent: None,
            child: None,
            live: Default::default(),
            log,
            serve_args: vec![],
            env: vec![],
            host: host.cloned(),
        };
        v.spawn()?;
        Ok(v)
    }

    pub fn data(&self) -> PathBuf {
        self.data.clone()
    }

    pub fn cell_file_path(&self) -> PathBuf {
        self.data().join("cell.toml")
    }

    pub fn admin_cred_path(&self) -> PathBuf {
        self.data().join("admin.cred")
    }

    /// The admin credential `vos` and `pts` use (an administrator of the cell).
    pub fn admin_identity(&self) -> Option<Identity> {
        Some(Identity::load(&self.admin_cred_path()).expect("admin credential"))
    }

    /// The password of the cell's first administrator, `admin`.
    pub fn admin_password(&self) -> String {
        std::fs::read_to_string(self.data().join("admin.password")).expect("admin.password").trim().to_string()
    }

    /// Runs `pts` with the admin credential.
    pub fn pts(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("pts"))
            .args(args)
            .env("AFS_CELL_FILE", self.cell_file_path())
            .env("AFS_ADMIN_CRED", self.admin_cred_path())
            .output()
            .expect("run pts")
    }

    /// Creates a user with a password (`pts createuser`).
    pub fn create_user(&self, name: &str, password: &str) -> Result<()> {
        let file = self.dir.path().join(format!("{name}.password"));
        std::fs::write(&file, password)?;
        let out = self.pts(&["createuser", name, "--password-file", &file.display().to_string()]);
        if !out.status.success() {
            bail!("pts createuser {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn cell_file(&self) -> CellFile {
        CellFile::load(&self.cell_file_path()).expect("cell file")
    }

    fn spawn(&mut self) -> Result<()> {
        self.spawn_again_nowait()?;
        self.wait_ready()
    }

    /// Starts `vice serve` again after `kill9` or `stop` and waits until it answers: with
    /// `kill9`, a restart storm can choose how long the server stays down.
    pub fn spawn_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("vice {} is still running: kill9 or stop it first", self.addr);
        }
        self.spawn()
    }

    /// Starts `vice serve` without waiting for it to answer (`wait_ready` does), so a test can
    /// kill it again in the middle of its start-up and recovery.
    pub fn spawn_again_nowait(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("vice {} is still running: kill9 or stop it first", self.addr);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = program(self.host.as_ref(), "vice")
            .args(["serve", "--data"])
            .arg(self.data())
            .args(&self.serve_args)
            .env("RUST_LOG", std::env::var("AFS_TEST_RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.live.store(child.id(), Ordering::Relaxed);
        self.child = Some(child);
        Ok(())
    }

    /// Restarts the server with `key=value` in its environment (kept for later restarts).
    pub fn restart_with_env(&mut self, key: &str, value: &str) -> Result<()> {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self.stop()?;
        self.spawn()
    }

    /// Whether the server process we started is alive (it may have exited on its own: a
    /// crash at start-up over a damaged data directory, say).
    pub fn is_running(&mut self) -> bool {
        child_alive(&mut self.child, &self.live)
    }

    /// The log file vice writes (kept outside the data directory).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The live pid cell that `Watched` reads at report time.
    pub(crate) fn live_pid(&self) -> Arc<AtomicU32> {
        self.live.clone()
    }

    /// Polls until the server answers a Hello.
    pub fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Probe this server (a joined server's cell file lists the database server first).
        let mut cell = self.cell_file();
        cell.servers.retain(|s| s.address == self.addr);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("vice exited with {status} during start-up:\n{}", self.log_text());
            }
            if probe(&cell) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("vice did not become ready in 30 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.live.store(0, Ordering::Relaxed);
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> Result<bool> {
        self.live.store(0, Ordering::Relaxed);
        match self.child.take() {
            Some(c) => terminate(c, "vice", || self.log_text()),
            None => Ok(true),
        }
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Runs `vos` against this cell with the admin credential.
    pub fn vos(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("vos"))
            .args(args)
            .env("AFS_CELL_FILE", self.cell_file_path())
            .env("AFS_ADMIN_CRED", self.admin_cred_path())
            .output()
            .expect("run vos")
    }
}

impl Drop for Vice {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("AFS_TEST_LOGS").is_some() {
            eprintln!("---- vice log {} ----\n{}", self.addr, tail(&self.log_text(), 400));
        }
        self.kill9();
    }
}

/// A protocol-level client, as venus would be, recording the callback breaks it receives.
pub struct TestClient {
    pub id: ClientId,
    pub session: Session,
    pub breaks: Arc<Mutex<Vec<Push>>>,
    /// Sent with every request (see `login`); `None`: anonymous, or the admin credential.
    pub token: Option<Token>,
    _connector: Connector,
}

impl TestClient {
    /// A client presenting the cell's admin credential (rights of system:administrators).
    pub async fn admin(vice: &Vice) -> Result<TestClient> {
        Self::connect_as(&vice.cell_file(), vice.admin_identity()).await
    }

    /// Logs in: every later request carries the token.
    pub async fn login(&mut self, user: &str, password: &str, lifetime: u32) -> Result<Token> {
        let req = Request::Login { user: user.into(), password: password.into(), lifetime };
        match self.session.call_ok(&req).await? {
            Response::Token { token } => {
                self.token = Some(token.clone());
                Ok(token)
            }
            other => bail!("unexpected {other:?}"),
        }
    }

    /// One request with this client's token; the server's refusal is the error.
    pub async fn call_ok(&self, req: &Request) -> Result<Response> {
        match self.session.call_as(self.token.as_ref(), req).await? {
            Response::Error(e) => Err(ProtoError::Remote(e).into()),
            other => Ok(other),
        }
    }

    pub async fn connect(cell: &CellFile) -> Result<TestClient> {
        Self::connect_as(cell, None).await
    }

    pub async fn connect_as(cell: &CellFile, identity: Option<Identity>) -> Result<TestClient> {
        Self::connect_with(cell, identity, ClientId::random()).await
    }

    /// Connects as a given client id: a client that reconnects after losing its connection.
    pub async fn connect_with(cell: &CellFile, identity: Option<Identity>, id: ClientId) -> Result<TestClient> {
        let connector = Connector::new(identity, TransportTuning::default())?;
        let session = connector.connect(&cell.servers[0], id, Duration::from_secs(30)).await?;
        let breaks = Arc::new(Mutex::new(Vec::new()));
        let sink = breaks.clone();
        session.spawn_push_handler(Arc::new(move |p| sink.lock().unwrap().push(p)));
        Ok(TestClient { id, session, breaks, token: None, _connector: connector })
    }

    pub fn broken(&self, fid: Fid) -> bool {
        self.breaks.lock().unwrap().iter().any(|p| match p {
            Push::BreakCallbacks { fids, .. } => fids.contains(&fid),
            Push::Recall { .. } => false,
        })
    }

    pub async fn root_of(&self, volume: &str) -> Result<Fid> {
        match self.call_ok(&Request::GetVolumeLocation { volume: msg::VolumeRef::Name(volume.into()) }).await? {
            Response::Location { entry, .. } => Ok(Fid::root(entry.rw)),
            other => bail!("unexpected {other:?}"),
        }
    }

    pub async fn mutate(&self, record: Record) -> Result<Applied> {
        match self.call_ok(&Request::Mutate { record }).await? {
            Response::Applied { result, .. } => Ok(result?),
            other => bail!("unexpected {other:?}"),
        }
    }

    pub async fn create(&self, parent: Fid, name: &str) -> Result<Attr> {
        let object = ObjectId::random();
        let applied = self
            .mutate(Record {
                op: OpId::random(),
                mutation: Mutation::Create {
                    parent,
                    name: Name::new(name)?,
                    object,
                    mode: 0o644,
                    owner: 0,
                    group: 0,
                    mtime: Timestamp::now(),
                },
            })
            .await?;
        applied.attrs.into_iter().find(|a| a.fid.object == object).context("no attrs for the new file")
    }

    pub async fn status(&self, fid: Fid) -> Result<Attr> {
        match self.call_ok(&Request::FetchStatus { fid }).await? {
            Response::Status { attr, .. } => Ok(attr),
            other => bail!("unexpected {other:?}"),
        }
    }

    /// Uploads what the server lacks of `data` and returns the chunk list.
    pub async fn upload(&self, volume: VolumeId, data: &[u8]) -> Result<(Vec<ChunkRef>, u32)> {
        let pieces = proto::chunk::chunk_bytes(data);
        let refs: Vec<ChunkRef> = pieces.iter().map(|(r, _)| *r).collect();
        let missing =
            self.session.missing_chunks(self.token.as_ref(), volume, refs.iter().map(|r| r.hash).collect()).await?;
        let to_send: Vec<ChunkRef> = missing.iter().map(|&i| refs[i as usize]).collect();
        let bytes: Vec<Vec<u8>> = missing.iter().map(|&i| pieces[i as usize].1.to_vec()).collect();
        let stored = if to_send.is_empty() {
            0
        } else {
            self.session.put_chunks(self.token.as_ref(), volume, to_send, |i| Ok(bytes[i].clone())).await?
        };
        Ok((refs, stored))
    }

    pub fn store_record(&self, attr: &Attr, chunks: Vec<ChunkRef>) -> Record {
        Record {
            op: OpId::random(),
            mutation: Mutation::Store {
                fid: attr.fid,
                base: Base::Version(attr.version.clone()),
                chunks,
                mtime: Timestamp::now(),
            },
        }
    }

    /// Stores `data` as the new contents of the file last seen as `attr`; returns its new attrs.
    pub async fn store(&self, attr: &Attr, data: &[u8]) -> Result<Attr> {
        let (chunks, _) = self.upload(attr.fid.volume, data).await?;
        let applied = self.mutate(self.store_record(attr, chunks)).await?;
        applied.attrs.into_iter().find(|a| a.fid == attr.fid).context("no attrs for the stored file")
    }

    pub async fn fetch(&self, fid: Fid) -> Result<(Attr, Vec<u8>)> {
        let mut out = Vec::new();
        let fetched = self
            .session
            .fetch_data(self.token.as_ref(), fid, |_, bytes| {
                out.extend_from_slice(bytes);
                Ok(())
            })
            .await?;
        Ok((fetched.attr, out))
    }
}

/// Deterministic pseudo-random bytes (xorshift), cheap enough for gigabytes.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }

    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Noise::new(seed).fill(&mut v);
        v
    }
}

/// Set to `1` to skip the FUSE tests on a machine without FUSE (off by default: without FUSE
/// they fail, saying how to enable it).
pub const SKIP_FUSE_ENV: &str = "AFS_SKIP_FUSE_TESTS";

/// Whether FUSE tests can run here. Panics with instructions if not, unless explicitly skipped.
pub fn fuse_available() -> bool {
    let dev = Path::new("/dev/fuse").exists();
    let fusermount =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()));
    if dev && fusermount {
        return true;
    }
    if std::env::var(SKIP_FUSE_ENV).as_deref() == Ok("1") {
        eprintln!("FUSE tests skipped because {SKIP_FUSE_ENV}=1");
        return false;
    }
    panic!(
        "FUSE is not available (/dev/fuse present: {dev}, fusermount3 on PATH: {fusermount}). \
         Install it with `apt-get install -y fuse3` (and `modprobe fuse` if /dev/fuse is missing), \
         or set {SKIP_FUSE_ENV}=1 to skip these tests explicitly."
    );
}

/// A running `venus mount` with its own cache directory.
pub struct VenusMount {
    pub dir: tempfile::TempDir,
    pub mountpoint: PathBuf,
    pub cell: String,
    cell_file: PathBuf,
    /// `dir/cache` unless started with `start_with_cache`.
    cache: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    /// The running child's pid (0: none), shared with `Watched` (see `Vice`).
    live: Arc<AtomicU32>,
    log: PathBuf,
    /// The test-network host it runs on (None: the test's own network).
    host: Option<Host>,
}

impl VenusMount {
    /// Mounts the cell of `vice` (whose cell name is `cell`).
    pub fn start(vice: &Vice, cell: &str) -> Result<VenusMount> {
        Self::start_with(vice, cell, &[])
    }

    pub fn start_with(vice: &Vice, cell: &str, extra: &[&str]) -> Result<VenusMount> {
        Self::start_with_cell_file(&vice.cell_file_path(), cell, extra)
    }

    /// Mounts with a given cell file (one that routes through a proxy, say).
    pub fn start_with_cell_file(cell_file: &Path, cell: &str, extra: &[&str]) -> Result<VenusMount> {
        Self::start_in_dirs(cell_file, cell, None, extra, None)
    }

    /// Mounts on a host of a `TestNetwork` (the mount itself is seen by the whole machine).
    pub fn start_on(host: &Host, vice: &Vice, cell: &str, extra: &[&str]) -> Result<VenusMount> {
        Self::start_in_dirs(&vice.cell_file_path(), cell, None, extra, Some(host))
    }

    /// Mounts with the cache directory at `cache` (on a small file system, say: `venus mount
    /// --cache DIR`); the mount point and the log stay in the mount's own temporary directory.
    /// `cell_file` is `vice.cell_file_path()` or a proxy's cell file.
    pub fn start_with_cache(cell_file: &Path, cell: &str, cache: &Path, extra: &[&str]) -> Result<VenusMount> {
        Self::start_in_dirs(cell_file, cell, Some(cache), extra, None)
    }

    fn start_in_dirs(
        cell_file: &Path,
        cell: &str,
        cache: Option<&Path>,
        extra: &[&str],
        host: Option<&Host>,
    ) -> Result<VenusMount> {
        let dir = tempfile::tempdir()?;
        let mountpoint = dir.path().join("afs");
        std::fs::create_dir_all(&mountpoint)?;
        let log = dir.path().join("venus.log");
        let cache = cache.map_or_else(|| dir.path().join("cache"), Path::to_path_buf);
        let mut m = VenusMount {
            dir,
            mountpoint,
            cell: cell.to_string(),
            cell_file: cell_file.to_path_buf(),
            cache,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            live: Default::default(),
            log,
            host: host.cloned(),
        };
        m.spawn()?;
        // Tests act as the cell's administrator unless they log in as someone else; the token
        // is kept in the cache directory, so it survives restarts of this venus.
        let password = cell_file.parent().map(|d| d.join("admin.password")).filter(|p| p.exists());
        if let Some(password) = password {
            m.login(0, "admin", &std::fs::read_to_string(password)?)?;
        }
        Ok(m)
    }

    /// `venus login USER` as local user `uid`.
    pub fn login(&self, uid: u32, user: &str, password: &str) -> Result<()> {
        self.login_for(uid, user, password, 0)
    }

    /// As `login`, asking for a token that lasts `lifetime` seconds.
    pub fn login_for(&self, uid: u32, user: &str, password: &str, lifetime: u32) -> Result<()> {
        use std::io::Write;
        let mut child = self
            .as_uid(uid, &["login", user, "--lifetime", &lifetime.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(format!("{}\n", password.trim()).as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("venus login {user} as uid {uid}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// A `venus` command run as local user `uid` (for tests with several users on one mount).
    pub fn as_uid(&self, uid: u32, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin("venus"));
        cmd.args(args).env("VENUS_CACHE", self.cache()).uid(uid).gid(uid);
        cmd
    }

    pub fn cache(&self) -> PathBuf {
        self.cache.clone()
    }

    /// The pid of the running `venus mount` (None after `stop` or `kill9`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the venus process is alive (it may have exited on its own).
    pub fn is_running(&mut self) -> bool {
        child_alive(&mut self.child, &self.live)
    }

    /// The log file venus writes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The live pid cell that `Watched` reads at report time.
    pub(crate) fn live_pid(&self) -> Arc<AtomicU32> {
        self.live.clone()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = program(self.host.as_ref(), "venus")
            .arg("mount")
            .arg("--cell-file")
            .arg(&self.cell_file)
            .arg("--cache")
            .arg(self.cache())
            .args(&self.extra)
            .arg(&self.mountpoint)
            .env("RUST_LOG", std::env::var("AFS_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.live.store(child.id(), Ordering::Relaxed);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("venus exited with {status}:\n{}", self.log_text());
            }
            if self.mounted() && self.venus(&["status", "--json"]).status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("venus did not mount in 30 s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn mounted(&self) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| {
                t.lines().any(|l| l.contains(&format!(" {} ", self.mountpoint.display())) && l.contains("fuse.venus"))
            })
            .unwrap_or(false)
    }

    /// A path inside the cell: `MOUNT/<cell>/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        let base = self.mountpoint.join(&self.cell);
        if rel.is_empty() { base } else { base.join(rel) }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a `venus` subcommand against this mount's cache.
    pub fn venus(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("venus")).args(args).env("VENUS_CACHE", self.cache()).output().expect("run venus")
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.venus(&["status", "--json"]);
        assert!(out.status.success(), "venus status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Records in the modification log not yet on a server.
    pub fn pending(&self) -> u64 {
        self.status()["pending_records"].as_u64().unwrap_or(0)
    }

    /// Waits (bounded) until venus considers every volume connected again (it probes servers
    /// it found unreachable every two seconds).
    pub fn wait_connected(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.status();
            let vols = st["volumes"].as_array().cloned().unwrap_or_default();
            if vols.iter().all(|v| v["state"] == "connected") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("still not connected after 30 s: {}", st["volumes"]);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until the log is empty: reintegration finished.
    pub fn wait_reintegrated(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.pending() > 0 {
            if Instant::now() > deadline {
                bail!("still {} records pending after 60 s:\n{}", self.pending(), tail(&self.log_text(), 40));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Runs a venus subcommand and insists that it succeeds.
    pub fn venus_ok(&self, args: &[&str]) -> String {
        let out = self.venus(args);
        assert!(out.status.success(), "venus {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many RPCs of this kind venus has made.
    pub fn rpcs(&self, name: &str) -> u64 {
        self.status()["counters"]["rpcs"][name].as_u64().unwrap_or(0)
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name].as_u64().unwrap_or(0)
    }

    /// Polls until `counter` reaches at least `value` (bounded; never a fixed sleep).
    pub fn wait_counter(&self, name: &str, value: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.counter(name) < value {
            if Instant::now() > deadline {
                bail!("counter {name} stayed below {value}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGKILL venus; with AutoUnmount the mount goes away by itself.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.live.store(0, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.mounted() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.mounted() {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mountpoint).status();
        }
    }

    /// SIGTERM and wait for a clean unmount; returns whether venus exited successfully.
    pub fn stop(&mut self) -> Result<bool> {
        self.live.store(0, Ordering::Relaxed);
        match self.child.take() {
            Some(c) => terminate(c, "venus", || self.log_text()),
            None => Ok(true),
        }
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Starts again after `stop` or `kill9`.
    pub fn restart_stopped(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.spawn()
    }
}

/// The last lines of a log, for failure reports.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for VenusMount {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("AFS_TEST_LOGS").is_some() {
            eprintln!("---- venus log {} ----\n{}", self.mountpoint.display(), tail(&self.log_text(), 400));
        }
        if self.child.is_some() {
            let _ = self.stop();
        }
        if self.mounted() {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mountpoint).status();
        }
    }
}

/// blake3 of a file, streamed.
/// Polls `check` every 100 ms until it holds, for at most `limit`; fails saying `what`.
pub fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !check()? {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn hash_file(path: &Path) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize())
}

/// A UDP proxy on loopback between clients and a server that can drop every packet on command:
/// a network cut, without touching either process.
pub struct UdpProxy {
    pub addr: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Client packets still to forward before cutting by itself (negative: no limit).
    budget: Arc<std::sync::atomic::AtomicI64>,
}

impl UdpProxy {
    pub fn start(upstream: &str) -> Result<UdpProxy> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let front = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0")?);
        front.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = front.local_addr()?.to_string();
        let upstream: std::net::SocketAddr = upstream.parse()?;
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(std::sync::atomic::AtomicI64::new(-1));
        let (c, s, b) = (cut.clone(), stop.clone(), budget.clone());
        std::thread::spawn(move || {
            let mut links: std::collections::HashMap<std::net::SocketAddr, Arc<std::net::UdpSocket>> =
                Default::default();
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, client)) = front.recv_from(&mut buf) else { continue };
                if b.load(Ordering::Relaxed) == 0 {
                    c.store(true, Ordering::Relaxed);
                }
                if c.load(Ordering::Relaxed) {
                    continue;
                }
                if b.load(Ordering::Relaxed) > 0 {
                    b.fetch_sub(1, Ordering::Relaxed);
                }
                let link = match links.get(&client) {
                    Some(l) => l.clone(),
                    None => {
                        let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") else { continue };
                        if sock.connect(upstream).is_err()
                            || sock.set_read_timeout(Some(Duration::from_millis(100))).is_err()
                        {
                            continue;
                        }
                        let sock = Arc::new(sock);
                        let (back, front2, c2, s2) = (sock.clone(), front.clone(), c.clone(), s.clone());
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 65_536];
                            while !s2.load(Ordering::Relaxed) {
                                if let Ok(n) = back.recv(&mut buf)
                                    && !c2.load(Ordering::Relaxed)
                                {
                                    let _ = front2.send_to(&buf[..n], client);
                                }
                            }
                        });
                        links.insert(client, sock.clone());
                        sock
                    }
                };
                let _ = link.send(&buf[..n]);
            }
        });
        Ok(UdpProxy { addr, cut, stop, budget })
    }

    /// Forwards `packets` more client packets, then cuts by itself: a cut at a chosen point of
    /// a conversation, without racing it from outside.
    pub fn cut_after(&self, packets: i64) {
        self.budget.store(packets, std::sync::atomic::Ordering::Relaxed);
    }

    /// Drops (true) or forwards (false) every packet from now on.
    pub fn cut(&self, on: bool) {
        if !on {
            self.budget.store(-1, std::sync::atomic::Ordering::Relaxed);
        }
        self.cut.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// A copy of `vice`'s cell file that sends clients through this proxy.
    pub fn cell_file(&self, vice: &Vice, dir: &Path) -> Result<PathBuf> {
        proxied_cell_file(vice, &self.addr, dir)
    }
}

/// Writes `dir/proxied-cell.toml`: `vice`'s cell file with its first server's address replaced
/// by `addr` (a proxy's), and copies the admin password beside it so `VenusMount` logs in.
pub fn proxied_cell_file(vice: &Vice, addr: &str, dir: &Path) -> Result<PathBuf> {
    let mut cell = vice.cell_file();
    let first = cell.servers.first_mut().context("the cell file lists no server")?;
    first.address = addr.to_string();
    let path = dir.join("proxied-cell.toml");
    std::fs::write(&path, cell.to_toml())?;
    std::fs::copy(vice.data().join("admin.password"), dir.join("admin.password"))?;
    Ok(path)
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An extended attribute of a file, as text (None if absent).
pub fn xattr(path: &Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    String::from_utf8(buf).ok()
}

impl VenusMount {
    /// Runs the `hoard` command against this venus.
    pub fn hoard(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("hoard")).args(args).env("VENUS_CACHE", self.cache()).output().expect("run hoard")
    }
}
