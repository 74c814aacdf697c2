//! A test network of hosts, each a network namespace with one address on a shared bridge, so a
//! test can cut chosen hosts off from each other (a partition) and heal it, while the test itself
//! (on the bridge) still reaches every host to look at what each one holds.
//!
//! Loopback cannot do this: every server on 127.0.0.1 talks from the same address, and a proxy
//! in front of a server cannot tell a peer server's packets from a client's. Here each process
//! runs in its host's namespace (`nsenter --net`, which keeps the mount namespace, so a FUSE
//! mount made there is seen by the test), and a partition is a pair of blackhole routes per
//! cut pair of hosts: nothing crosses in either direction, and no other host is touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The bridge's subnet; every namespace here is the test's own, so tests cannot collide.
const SUBNET: &str = "10.99.0";
/// Where the test itself sits on the bridge.
const HUB_ADDRESS: u8 = 254;

/// One host of a `TestNetwork`.
#[derive(Clone, Debug)]
pub struct Host {
    /// The network namespace (`ip netns` name).
    pub ns: String,
    /// Its address on the bridge.
    pub ip: String,
}

impl Host {
    /// A command run inside this host's network namespace (only the network: files, mounts and
    /// processes are shared with the test). `nsenter` execs the program, so the child's pid is
    /// the program's own and killing it kills the program.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns_path(&self.ns).display())).arg("--").arg(program);
        cmd
    }
}

/// Hosts on one bridge, in namespaces made for this test and removed when it drops.
pub struct TestNetwork {
    hub: String,
    hosts: Vec<Host>,
    /// Pairs of hosts (by index) cut off from each other now.
    cut: Vec<(usize, usize)>,
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Namespaces left behind by tests whose process is gone (killed before its drop ran).
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("afs-").and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl TestNetwork {
    /// Makes `hosts` hosts and moves the calling thread into the bridge's namespace: what it
    /// starts afterwards (threads, sockets, child processes) is on the bridge too and reaches
    /// every host. Call it before starting anything else in the test.
    pub fn new(hosts: usize) -> Result<TestNetwork> {
        anyhow::ensure!(hosts < usize::from(HUB_ADDRESS), "at most {} hosts", HUB_ADDRESS - 1);
        sweep_stale();
        let prefix = format!("afs-{}-{}", std::process::id(), rand::random::<u32>());
        let hub = format!("{prefix}-hub");
        ip(&["netns", "add", &hub])?;
        let mut net = TestNetwork { hub: hub.clone(), hosts: vec![], cut: vec![] };
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", &format!("{SUBNET}.{HUB_ADDRESS}/24"), "dev", "br0"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let ns = format!("{prefix}-{i}");
            ip(&["netns", "add", &ns])?;
            let address = format!("{SUBNET}.{}", i + 1);
            net.hosts.push(Host { ns: ns.clone(), ip: address.clone() });
            let port = format!("v{i}");
            ip(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        net.enter_hub()?;
        Ok(net)
    }

    fn enter_hub(&self) -> Result<()> {
        let path = netns_path(&self.hub);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a namespace file we hold open; it changes only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {}: {}", self.hub, std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Cuts every host of `a` off from every host of `b`, both ways. The test (on the bridge)
    /// still reaches all of them.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) -> Result<()> {
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    let to_ip = format!("{}/32", self.hosts[to].ip);
                    ip(&["-n", &self.hosts[from].ns, "route", "add", "blackhole", &to_ip])?;
                }
                self.cut.push((x, y));
            }
        }
        Ok(())
    }

    /// Undoes every partition.
    pub fn heal(&mut self) -> Result<()> {
        for (x, y) in std::mem::take(&mut self.cut) {
            for (from, to) in [(x, y), (y, x)] {
                let to_ip = format!("{}/32", self.hosts[to].ip);
                ip(&["-n", &self.hosts[from].ns, "route", "del", "blackhole", &to_ip])?;
            }
        }
        Ok(())
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        // A process still in a namespace keeps it alive until it exits; the name goes now.
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.hub]);
    }
}
