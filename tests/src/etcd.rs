//! A real etcd cluster on 127.0.0.1 for the cell-database tests: the Debian `etcd` binary
//! (package `etcd-server`), one process per member, each with its own data directory and
//! ports. Members can be SIGKILLed and started again; every process dies with the handle.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free TCP port on loopback (the OS picks one; tiny race, acceptable in tests).
fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The etcd binary, or a failure that says how to install it (never a silent skip).
fn etcd_binary() -> Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/local/bin"]) {
        let p = Path::new(dir).join("etcd");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "the etcd binary is missing: install it (`apt-get install etcd-server`; .ci/run does) to run the cell database tests"
    )
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    etcd: PathBuf,
}

impl EtcdCluster {
    /// Starts a cluster of `n` members and waits until it has a leader.
    pub fn start(n: usize) -> Result<EtcdCluster> {
        let etcd = etcd_binary()?;
        let dir = tempfile::tempdir()?;
        let members = (1..=n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_tcp_port(),
                peer: free_tcp_port(),
                data: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster { dir, members, etcd };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        let peers: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect();
        peers.join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let initial = self.initial_cluster();
        let token = format!("afs-test-{}", self.dir.path().display());
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log)?;
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new(&self.etcd)
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &token])
            // Elections in about a second, as on a LAN.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.etcd.display()))?;
        m.child = Some(child);
        Ok(())
    }

    /// `etcd://127.0.0.1:P1,...`: what `vice init --cell-db` takes.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.members.iter().map(|m| format!("127.0.0.1:{}", m.client)).collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Whether member `i` answers `/health` with a leader in the cluster.
    fn healthy(&self, i: usize) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.members[i].client)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// Waits until every running member is healthy.
    pub fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let running: Vec<usize> = (0..self.members.len()).filter(|i| self.members[*i].child.is_some()).collect();
            if running.iter().all(|i| self.healthy(*i)) {
                return Ok(());
            }
            for i in &running {
                if let Some(c) = self.members[*i].child.as_mut()
                    && let Some(status) = c.try_wait()?
                {
                    bail!("etcd member {} exited with {status}:\n{}", self.members[*i].name, self.log_text(*i));
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = running.iter().map(|i| self.log_text(*i)).collect();
                bail!("etcd did not become healthy in 30 s:\n{}", logs.join("\n----\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again (after `kill9`), on its data directory.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.members[i].child.is_some() {
            bail!("etcd member {i} is running");
        }
        self.spawn(i)
    }

    fn log_text(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        crate::tail(&text, 40)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if std::thread::panicking() {
                eprintln!("---- etcd {} log ----\n{}", self.members[i].name, self.log_text(i));
            }
            self.kill9(i);
        }
    }
}
