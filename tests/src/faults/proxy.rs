//! `LossyProxy`: a UDP forwarder on loopback between clients and one upstream that impairs each
//! direction on its own: a drop probability, a fixed delay and a random extra delay (jitter, which
//! reorders packets), all changeable while it runs, plus a cut of every packet.
//!
//! Shape: one thread receives from clients (client → server), one thread per client link
//! receives from the upstream (server → client), and one sender thread owns the delay queue, a
//! min-heap on due time woken by a condvar. Receive threads never sleep on a delay: they decide
//! (drop, send now, or queue) and go back to receiving, so a delay never slows the receive path
//! or loses packets to a full socket buffer.
//!
//! Determinism: every random choice comes from a seeded `StdRng`, one per receive thread (the
//! client → server one seeded from the seed, each link's from the seed and the order in which
//! clients first spoke), and every packet draws the same two numbers whatever the settings. So a
//! given seed and packet sequence always loses the same packets.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Vice;

/// Which way a packet travels through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a client (venus) to the upstream (vice).
    ToServer,
    /// From the upstream back to a client.
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToServer => 0,
            Direction::ToClient => 1,
        }
    }
}

/// How one direction is impaired. The default forwards everything at once.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Probability (0..=1) that a packet is dropped.
    pub loss: f64,
    /// Added to every packet that is not dropped.
    pub delay: Duration,
    /// Up to this much more, uniformly at random per packet: packets overtake one another.
    pub jitter: Duration,
}

impl Impairment {
    /// Forwards everything at once.
    pub const NONE: Impairment = Impairment { loss: 0.0, delay: Duration::ZERO, jitter: Duration::ZERO };

    /// Drops a share `loss` of the packets, without delay.
    pub fn lossy(loss: f64) -> Impairment {
        Impairment { loss, ..Impairment::NONE }
    }

    /// Delays every packet by `delay` plus up to `jitter`.
    pub fn delayed(delay: Duration, jitter: Duration) -> Impairment {
        Impairment { delay, jitter, ..Impairment::NONE }
    }
}

/// Counters of one direction, since the proxy started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Packets the proxy received in this direction and decided on: each one is also counted in
    /// exactly one of the other fields, or is still in flight (see `LossyProxy::in_flight`).
    pub received: u64,
    /// Packets handed to the kernel for the other side.
    pub forwarded: u64,
    /// Dropped at random (or because the delay queue was full).
    pub lost: u64,
    /// Dropped because the proxy was cut when they arrived or fell due.
    pub cut: u64,
    /// Sends the kernel refused (the upstream is down, say: ICMP port unreachable).
    pub failed: u64,
}

impl DirStats {
    /// Every packet that did not go through, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.lost + self.cut + self.failed
    }
}

/// Delayed packets beyond this many are dropped (counted as lost), bounding the memory a long
/// delay under a fast sender can take.
const MAX_QUEUED: usize = 32_768;

/// How long receive threads block before looking at the stop flag.
const POLL: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    lost: AtomicU64,
    cut: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirStats {
        // `received` first, with Acquire against the Release in `admit`: every packet it counts
        // is then seen in the other counters too (or in flight).
        let received = self.received.load(Ordering::Acquire);
        DirStats {
            received,
            forwarded: self.forwarded.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            cut: self.cut.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// Where a packet goes once due.
enum Target {
    /// The upstream, through the link socket of the client that sent it.
    Upstream(Arc<UdpSocket>),
    /// A client, from the proxy's front socket.
    Client(SocketAddr),
}

struct Pending {
    due: Instant,
    /// Arrival order, so packets due at the same instant leave in the order they came.
    seq: u64,
    dir: Direction,
    target: Target,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest due packet first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

struct Queue {
    heap: BinaryHeap<Pending>,
    seq: u64,
}

struct Shared {
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    seed: u64,
    settings: Mutex<[Impairment; 2]>,
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: [Counters; 2],
    cut: AtomicBool,
    stop: AtomicBool,
    /// Client packets still to forward before cutting by itself (negative: no limit).
    budget: AtomicI64,
    links: Mutex<Vec<JoinHandle<()>>>,
}

/// Locks a mutex even if a thread panicked while holding it: the data here (settings, a queue
/// of packets) stays meaningful, and the proxy must keep working for the test to report.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn counters(&self, dir: Direction) -> &Counters {
        &self.stats[dir.index()]
    }

    /// Decides the fate of one received packet, then counts it as received, so a test that
    /// waits for `received` sees the outcome in the other counters.
    fn admit(&self, dir: Direction, rng: &mut StdRng, data: &[u8], target: Target) {
        self.decide(dir, rng, data, target);
        self.counters(dir).received.fetch_add(1, Ordering::Release);
    }

    /// Drops one packet, sends it now, or queues it.
    fn decide(&self, dir: Direction, rng: &mut StdRng, data: &[u8], target: Target) {
        let c = self.counters(dir);
        // Both draws happen for every packet, so the random sequence does not depend on the
        // settings or on the cut.
        let (roll, spread): (f64, f64) = (rng.random(), rng.random());
        if self.cut.load(Ordering::Relaxed) {
            c.cut.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let imp = lock(&self.settings)[dir.index()];
        if roll < imp.loss {
            c.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let wait = imp.delay + imp.jitter.mul_f64(spread);
        if wait.is_zero() {
            self.send(dir, &target, data);
            return;
        }
        let mut q = lock(&self.queue);
        if q.heap.len() >= MAX_QUEUED {
            c.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.seq += 1;
        let seq = q.seq;
        q.heap.push(Pending { due: Instant::now() + wait, seq, dir, target, data: data.to_vec() });
        drop(q);
        self.wake.notify_one();
    }

    fn send(&self, dir: Direction, target: &Target, data: &[u8]) {
        let c = self.counters(dir);
        let sent = match target {
            Target::Upstream(link) => link.send(data),
            Target::Client(addr) => self.front.send_to(data, addr),
        };
        match sent {
            Ok(_) => c.forwarded.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The sender thread: sends each queued packet when it falls due.
    fn run_sender(&self) {
        loop {
            let mut q = lock(&self.queue);
            let due = loop {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                match q.heap.peek().map(|p| p.due) {
                    Some(due) if due <= now => break q.heap.pop(),
                    Some(due) => q = self.wake.wait_timeout(q, due - now).unwrap_or_else(|e| e.into_inner()).0,
                    None => q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
                }
            };
            drop(q);
            let Some(p) = due else { continue };
            // A cut also swallows what was in flight, as pulling a cable does.
            if self.cut.load(Ordering::Relaxed) {
                self.counters(p.dir).cut.fetch_add(1, Ordering::Relaxed);
            } else {
                self.send(p.dir, &p.target, &p.data);
            }
        }
    }

    /// The client → server thread: receives from every client, opening a link per client.
    fn run_front(self: &Arc<Self>) {
        let mut links: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut buf = vec![0u8; 65_536];
        while !self.stop.load(Ordering::Relaxed) {
            let (n, client) = match self.front.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    continue;
                }
                Err(_) => {
                    // Not expected on an unconnected socket; a pause keeps an odd error from
                    // turning into a busy loop.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            };
            // `cut_after`: the budget runs out on the packet after the last one allowed.
            if self.budget.load(Ordering::Relaxed) == 0 {
                self.cut.store(true, Ordering::Relaxed);
            }
            if !self.cut.load(Ordering::Relaxed) && self.budget.load(Ordering::Relaxed) > 0 {
                self.budget.fetch_sub(1, Ordering::Relaxed);
            }
            let link = match links.get(&client) {
                Some(l) => l.clone(),
                None => match self.open_link(client, links.len() as u64) {
                    Ok(l) => {
                        links.insert(client, l.clone());
                        l
                    }
                    Err(_) => {
                        self.counters(Direction::ToServer).failed.fetch_add(1, Ordering::Relaxed);
                        self.counters(Direction::ToServer).received.fetch_add(1, Ordering::Release);
                        continue;
                    }
                },
            };
            self.admit(Direction::ToServer, &mut rng, &buf[..n], Target::Upstream(link));
        }
    }

    /// A socket connected to the upstream for one client, and the thread that carries the
    /// upstream's answers back to that client.
    fn open_link(self: &Arc<Self>, client: SocketAddr, index: u64) -> Result<Arc<UdpSocket>> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(self.upstream)?;
        sock.set_read_timeout(Some(POLL))?;
        enlarge_buffers(&sock);
        let sock = Arc::new(sock);
        let (back, shared) = (sock.clone(), self.clone());
        // Spread the per-link seeds apart (golden-ratio increment) so links draw unrelated
        // sequences.
        let seed = self.seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(index + 1);
        let handle = std::thread::Builder::new().name("proxy-link".into()).spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut buf = vec![0u8; 65_536];
            while !shared.stop.load(Ordering::Relaxed) {
                match back.recv(&mut buf) {
                    Ok(n) => shared.admit(Direction::ToClient, &mut rng, &buf[..n], Target::Client(client)),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    // ECONNREFUSED after an ICMP port unreachable (vice is down): it comes once
                    // per refused packet; a pause keeps a burst of them from spinning.
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })?;
        lock(&self.links).push(handle);
        Ok(sock)
    }
}

/// Asks for 4 MiB socket buffers (forced past `rmem_max` when we are root), so a burst of QUIC
/// packets is not dropped by the kernel before the proxy reads it: only the impairment should
/// lose packets. Best effort: smaller buffers still work, with unplanned loss under bursts.
fn enlarge_buffers(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        for opt in [force, plain] {
            // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and its size.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}

/// A UDP proxy on loopback that loses, delays and reorders packets on command, per direction.
pub struct LossyProxy {
    /// The address clients send to.
    pub addr: String,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl LossyProxy {
    /// A proxy to `upstream` that forwards everything until told otherwise.
    pub fn start(upstream: &str, seed: u64) -> Result<LossyProxy> {
        Self::start_with(upstream, seed, Impairment::NONE, Impairment::NONE)
    }

    /// A proxy to `upstream` impaired from the first packet.
    pub fn start_with(upstream: &str, seed: u64, to_server: Impairment, to_client: Impairment) -> Result<LossyProxy> {
        let upstream: SocketAddr = upstream.parse().with_context(|| format!("upstream address {upstream:?}"))?;
        let front = UdpSocket::bind("127.0.0.1:0")?;
        front.set_read_timeout(Some(POLL))?;
        enlarge_buffers(&front);
        let addr = front.local_addr()?.to_string();
        let shared = Arc::new(Shared {
            front: Arc::new(front),
            upstream,
            seed,
            settings: Mutex::new([to_server, to_client]),
            queue: Mutex::new(Queue { heap: BinaryHeap::new(), seq: 0 }),
            wake: Condvar::new(),
            stats: Default::default(),
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            budget: AtomicI64::new(-1),
            links: Mutex::new(Vec::new()),
        });
        let (a, b) = (shared.clone(), shared.clone());
        let front_thread = std::thread::Builder::new().name("proxy-front".into()).spawn(move || a.run_front())?;
        let sender = std::thread::Builder::new().name("proxy-sender".into()).spawn(move || b.run_sender())?;
        Ok(LossyProxy { addr, shared, threads: vec![front_thread, sender] })
    }

    /// Changes one direction's impairment; packets already queued keep their due time.
    pub fn set(&self, dir: Direction, imp: Impairment) {
        lock(&self.shared.settings)[dir.index()] = imp;
    }

    /// Changes both directions' impairment.
    pub fn set_both(&self, imp: Impairment) {
        *lock(&self.shared.settings) = [imp, imp];
    }

    /// One direction's current impairment.
    pub fn impairment(&self, dir: Direction) -> Impairment {
        lock(&self.shared.settings)[dir.index()]
    }

    /// Drops (true) or forwards (false) every packet from now on, including those in flight.
    pub fn cut(&self, on: bool) {
        if !on {
            self.shared.budget.store(-1, Ordering::Relaxed);
        }
        self.shared.cut.store(on, Ordering::Relaxed);
    }

    /// Whether the proxy is cut (by `cut(true)` or a spent `cut_after`).
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::Relaxed)
    }

    /// Forwards `packets` more client packets, then cuts by itself (as `UdpProxy::cut_after`).
    pub fn cut_after(&self, packets: i64) {
        self.shared.budget.store(packets, Ordering::Relaxed);
    }

    /// Counters of one direction.
    pub fn stats(&self, dir: Direction) -> DirStats {
        self.shared.counters(dir).snapshot()
    }

    /// Packets waiting in the delay queue.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.queue).heap.len()
    }

    /// A copy of `vice`'s cell file whose first server is reached through this proxy.
    pub fn cell_file(&self, vice: &Vice, dir: &Path) -> Result<PathBuf> {
        crate::proxied_cell_file(vice, &self.addr, dir)
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        {
            // Under the queue's lock: the sender checks the flag and starts waiting under it,
            // so the wake-up below cannot fall between the two and be lost.
            let _q = lock(&self.shared.queue);
            self.shared.stop.store(true, Ordering::Relaxed);
        }
        self.shared.wake.notify_all();
        // Bounded: receive threads look at the flag every POLL, the sender as soon as woken.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let links = std::mem::take(&mut *lock(&self.shared.links));
        for t in links {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A plain UDP socket on loopback that collects `u32` sequence numbers, echoing each packet
    /// back to its sender when asked, so both directions of the proxy can be exercised.
    struct Sink {
        addr: String,
        got: Arc<Mutex<Vec<(u32, Instant)>>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Sink {
        fn start(echo: bool) -> Sink {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
            sock.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            enlarge_buffers(&sock);
            let addr = sock.local_addr().expect("addr").to_string();
            let got = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let (g, s) = (got.clone(), stop.clone());
            let thread = std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let at = Instant::now();
                        let seq = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                        lock(&g).push((seq, at));
                        if echo {
                            let _ = sock.send_to(&buf[..n], from);
                        }
                    }
                }
            });
            Sink { addr, got, stop, thread: Some(thread) }
        }

        fn seqs(&self) -> Vec<u32> {
            lock(&self.got).iter().map(|(s, _)| *s).collect()
        }

        fn count(&self) -> usize {
            lock(&self.got).len()
        }
    }

    impl Drop for Sink {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Polls `cond` for up to 10 s; the timeout is a failure, never the measurement.
    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends packets numbered `from..to` from `client` to the proxy, in batches that wait for
    /// the proxy to have read the previous batch, so the kernel never drops any on the way in
    /// and every count below is the proxy's doing.
    fn send_paced(client: &UdpSocket, proxy: &LossyProxy, from: u32, to: u32) {
        let base = proxy.stats(Direction::ToServer).received;
        for seq in from..to {
            client.send_to(&seq.to_le_bytes(), &proxy.addr).expect("send");
            let sent = u64::from(seq - from + 1);
            if sent % 64 == 0 || seq + 1 == to {
                wait_for("the proxy to read a batch", || proxy.stats(Direction::ToServer).received >= base + sent);
            }
        }
    }

    fn client() -> UdpSocket {
        let c = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        c.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        enlarge_buffers(&c);
        c
    }

    /// Reads what comes back to `client` until `n` packets arrived (bounded).
    fn read_back(client: &UdpSocket, n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < n {
            assert!(Instant::now() < deadline, "only {} of {n} echoes came back", out.len());
            if let Ok(len) = client.recv(&mut buf) {
                assert!(len >= 4, "short packet");
                out.push(u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")));
            }
        }
        out
    }

    #[test]
    fn forwards_everything_in_order_both_ways_without_impairment() {
        let sink = Sink::start(true);
        let proxy = LossyProxy::start(&sink.addr, 1).expect("proxy");
        let c = client();
        send_paced(&c, &proxy, 0, 2000);
        let back = read_back(&c, 2000);
        // One thread per direction and loopback keep order when nothing is delayed.
        assert_eq!(sink.seqs(), (0..2000).collect::<Vec<_>>());
        assert_eq!(back, (0..2000).collect::<Vec<_>>());
        let (up, down) = (proxy.stats(Direction::ToServer), proxy.stats(Direction::ToClient));
        assert_eq!((up.received, up.forwarded, up.dropped()), (2000, 2000, 0), "{up:?}");
        assert_eq!((down.received, down.forwarded, down.dropped()), (2000, 2000, 0), "{down:?}");
    }

    /// The packets a 20 % loss lets through for a given seed.
    fn lossy_run(seed: u64) -> (DirStats, HashSet<u32>) {
        let sink = Sink::start(false);
        let proxy = LossyProxy::start_with(&sink.addr, seed, Impairment::lossy(0.2), Impairment::NONE).expect("proxy");
        let c = client();
        send_paced(&c, &proxy, 0, 4000);
        let st = proxy.stats(Direction::ToServer);
        wait_for("the sink to get every forwarded packet", || sink.count() as u64 >= st.forwarded);
        (st, sink.seqs().into_iter().collect())
    }

    #[test]
    fn drops_about_the_asked_share_and_the_same_packets_for_the_same_seed() {
        let (st, got) = lossy_run(42);
        assert_eq!(st.received, 4000);
        assert_eq!(st.lost + st.forwarded, 4000, "{st:?}");
        // Expected 800 with a standard deviation of about 25: these bounds never flake.
        assert!((600..=1000).contains(&st.lost), "lost {} of 4000 at 20 % loss", st.lost);
        assert_eq!(got.len() as u64, st.forwarded);
        let (st2, got2) = lossy_run(42);
        assert_eq!(st2, st, "the same seed loses the same number");
        assert_eq!(got2, got, "the same seed loses the same packets");
        let (_, other) = lossy_run(43);
        assert_ne!(other, got, "another seed loses other packets");
    }

    #[test]
    fn jitter_reorders_and_loses_nothing() {
        let sink = Sink::start(false);
        let proxy = LossyProxy::start(&sink.addr, 7).expect("proxy");
        proxy.set(Direction::ToServer, Impairment::delayed(Duration::ZERO, Duration::from_millis(20)));
        let c = client();
        send_paced(&c, &proxy, 0, 500);
        wait_for("every packet", || sink.count() >= 500);
        let got = sink.seqs();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..500).collect::<Vec<_>>(), "jitter must not lose or duplicate packets");
        let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(inversions > 0, "20 ms of jitter over 500 packets sent within milliseconds changed no order");
        assert_eq!(proxy.in_flight(), 0);
    }

    #[test]
    fn delay_holds_packets_back_and_changes_while_running() {
        let sink = Sink::start(false);
        let proxy = LossyProxy::start(&sink.addr, 3).expect("proxy");
        let c = client();
        send_paced(&c, &proxy, 0, 1);
        wait_for("the undelayed packet", || sink.count() == 1);
        let delay = Duration::from_millis(150);
        proxy.set(Direction::ToServer, Impairment::delayed(delay, Duration::ZERO));
        assert_eq!(proxy.impairment(Direction::ToServer).delay, delay);
        let sent = Instant::now();
        send_paced(&c, &proxy, 1, 2);
        wait_for("the delayed packet", || sink.count() == 2);
        let (seq, at) = lock(&sink.got)[1];
        assert_eq!(seq, 1);
        // The arrival time is only a lower bound: a slow machine may deliver later, never earlier.
        assert!(at.duration_since(sent) >= delay, "delivered after {:?}, before its delay", at.duration_since(sent));
    }

    #[test]
    fn cut_drops_everything_until_lifted_and_cut_after_cuts_by_itself() {
        let sink = Sink::start(false);
        let proxy = LossyProxy::start(&sink.addr, 5).expect("proxy");
        let c = client();
        proxy.cut(true);
        send_paced(&c, &proxy, 0, 10);
        let st = proxy.stats(Direction::ToServer);
        assert_eq!((st.cut, st.forwarded), (10, 0), "{st:?}");
        proxy.cut(false);
        send_paced(&c, &proxy, 10, 11);
        wait_for("the packet after the cut", || sink.count() == 1);
        assert_eq!(sink.seqs(), vec![10]);
        proxy.cut_after(3);
        send_paced(&c, &proxy, 11, 20);
        wait_for("the budget's packets", || sink.count() == 4);
        assert!(proxy.is_cut());
        let st = proxy.stats(Direction::ToServer);
        assert_eq!((st.forwarded, st.cut), (4, 16), "{st:?}");
    }
}
