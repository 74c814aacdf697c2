//! Callback promises: what venus may use without asking, per object and per volume, and the
//! breaks that end them. This part owns that state; the rest of the core asks it.
//!
//! Breaks can overtake replies. A reply carrying a promise and a callback break of the same
//! object travel on different streams, so venus can hear the break first: the server applied
//! another client's change after it answered us, broke our promise, and our reply (with the
//! promise granted before that change) arrives afterwards. Taken as it comes, that reply would
//! restore the promise over state venus knows to be old: a listing missing the other client's
//! new file, trusted for hours. AFS clients guard against this with a callback-break counter;
//! so does venus: every break gets a sequence number, each request notes the number before it
//! is sent (a [`Ticket`]), and a promise is taken only if no break of its object (or of the
//! whole cell, when promises were lost) came after the ticket.
//!
//! Our own changes can overtake replies too: a status fetched just before our store reached the
//! server, taken in after the store's answer, would take the cache back to the version before
//! it, and the next change based on it would be refused as a conflict. So the answers to our
//! changes are numbered in the same sequence, and a fetched reply's attributes are taken in only
//! if no change of ours to the object was answered after its ticket ([`Promises::take_fetched`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::VolumeId;
use proto::msg::Promise;

use super::lock;
use crate::ids::{CellId, GFid};

/// The promises venus holds, and the breaks that ended them.
#[derive(Default)]
pub struct Promises {
    objects: Mutex<HashMap<GFid, Instant>>,
    volumes: Mutex<HashMap<(CellId, VolumeId), Instant>>,
    /// Taken first whenever a promise is given or broken, so none slips in between.
    breaks: Mutex<BreakLog>,
}

fn expiry(p: Promise) -> Instant {
    Instant::now() + Duration::from_secs(u64::from(p.secs))
}

impl Promises {
    /// Whether `g`'s own promise holds.
    pub fn holds(&self, g: &GFid) -> bool {
        lock(&self.objects).get(g).is_some_and(|exp| *exp > Instant::now())
    }

    /// Whether the volume's promise holds (everything cached from it is current).
    pub fn volume_holds(&self, cell: CellId, volume: VolumeId) -> bool {
        lock(&self.volumes).get(&(cell, volume)).is_some_and(|exp| *exp > Instant::now())
    }

    /// Taken before a request that may bring promises is sent.
    pub fn ticket(&self) -> Ticket {
        lock(&self.breaks).ticket()
    }

    /// Takes a promise on `g` from a request sent with `ticket`, unless a break of `g` came
    /// since (it overtook the reply: what the reply says may already be old).
    pub fn promise(&self, g: GFid, p: Promise, ticket: Ticket) {
        let breaks = lock(&self.breaks);
        if p.secs > 0 && breaks.object_holds(&g, ticket) {
            lock(&self.objects).insert(g, expiry(p));
        }
    }

    /// As [`Promises::promise`], for a volume.
    pub fn promise_volume(&self, cell: CellId, volume: VolumeId, p: Promise, ticket: Ticket) {
        let breaks = lock(&self.breaks);
        if p.secs > 0 && breaks.volume_holds(cell, volume, ticket) {
            lock(&self.volumes).insert((cell, volume), expiry(p));
        }
    }

    /// Stops trusting `g` (venus itself found it changed or gone).
    pub fn drop_object(&self, g: &GFid) {
        lock(&self.objects).remove(g);
    }

    /// Stops trusting the volume as a whole.
    pub fn drop_volume(&self, cell: CellId, volume: VolumeId) {
        lock(&self.volumes).remove(&(cell, volume));
    }

    /// A server broke the promise on `g`: recorded with the promise dropped, so a reply it
    /// overtook cannot restore it.
    pub fn object_broken(&self, g: GFid) {
        let mut breaks = lock(&self.breaks);
        breaks.object_broken(g);
        lock(&self.objects).remove(&g);
    }

    /// A break touched the volume.
    pub fn volume_broken(&self, cell: CellId, volume: VolumeId) {
        let mut breaks = lock(&self.breaks);
        breaks.volume_broken(cell, volume);
        lock(&self.volumes).remove(&(cell, volume));
    }

    /// Every promise on the volume is lost (another server serves it now); returns the objects
    /// that held one.
    pub fn volume_lost(&self, cell: CellId, volume: VolumeId) -> Vec<GFid> {
        let mut breaks = lock(&self.breaks);
        breaks.volume_broken(cell, volume);
        lock(&self.volumes).remove(&(cell, volume));
        let mut objects = lock(&self.objects);
        let of = |g: &GFid| g.cell == cell && g.fid.volume == volume;
        let lost = objects.keys().filter(|g| of(g)).copied().collect();
        objects.retain(|g, _| !of(g));
        lost
    }

    /// Every promise of the cell is lost; returns the objects that held one.
    pub fn cell_lost(&self, cell: CellId) -> Vec<GFid> {
        let mut breaks = lock(&self.breaks);
        breaks.cell_broken(cell);
        lock(&self.volumes).retain(|(c, _), _| *c != cell);
        let mut objects = lock(&self.objects);
        let lost = objects.keys().filter(|g| g.cell == cell).copied().collect();
        objects.retain(|g, _| g.cell != cell);
        lost
    }

    /// Changes of ours to these objects were answered (and are about to be taken into the
    /// cache): replies to requests sent before now no longer speak for them.
    pub fn changed_here(&self, objects: impl IntoIterator<Item = GFid>) {
        let mut breaks = lock(&self.breaks);
        for g in objects {
            breaks.changed_here(g);
        }
    }

    /// Runs `take` (taking a fetched reply's attributes of `g` into the cache) unless a change
    /// of ours to `g` was answered since `ticket`; says whether it ran. Held under the break
    /// log's lock, so a change answered meanwhile is taken in after it, never before.
    pub fn take_fetched<E>(&self, g: &GFid, ticket: Ticket, take: impl FnOnce() -> Result<(), E>) -> Result<bool, E> {
        let breaks = lock(&self.breaks);
        if !breaks.unchanged_here(g, ticket) {
            return Ok(false);
        }
        take().map(|()| true)
    }

    /// Number of objects holding an unexpired promise.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        lock(&self.objects).values().filter(|e| **e > now).count()
    }
}

/// Taken before a request is sent; its promises count only if nothing broke them since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// How long a break is remembered. A request still unanswered after this long finds its
/// promises refused (see `forgotten_below`), which only costs asking again.
const REMEMBER: Duration = Duration::from_secs(600);
/// Breaks remembered before old ones are forgotten.
const MOST: usize = 16_384;

#[derive(Default)]
struct BreakLog {
    seq: u64,
    objects: HashMap<GFid, (u64, Instant)>,
    /// Our own changes answered, numbered with the breaks.
    ours: HashMap<GFid, (u64, Instant)>,
    volumes: HashMap<(CellId, VolumeId), u64>,
    cells: HashMap<CellId, u64>,
    /// Breaks before this were forgotten: a ticket older than that trusts nothing.
    forgotten_below: u64,
}

impl BreakLog {
    fn ticket(&self) -> Ticket {
        Ticket(self.seq)
    }

    fn object_broken(&mut self, g: GFid) {
        self.seq += 1;
        self.objects.insert(g, (self.seq, Instant::now()));
        if self.objects.len() > MOST {
            self.forgotten_below = self.forgotten_below.max(forget_old(&mut self.objects));
        }
    }

    fn changed_here(&mut self, g: GFid) {
        self.seq += 1;
        self.ours.insert(g, (self.seq, Instant::now()));
        if self.ours.len() > MOST {
            self.forgotten_below = self.forgotten_below.max(forget_old(&mut self.ours));
        }
    }

    /// Whether no change of ours to `g` was answered after `ticket`.
    fn unchanged_here(&self, g: &GFid, ticket: Ticket) -> bool {
        ticket.0 >= self.forgotten_below && self.ours.get(g).is_none_or(|(s, _)| *s <= ticket.0)
    }

    fn volume_broken(&mut self, cell: CellId, volume: VolumeId) {
        self.seq += 1;
        self.volumes.insert((cell, volume), self.seq);
    }

    /// Every promise of the cell was lost.
    fn cell_broken(&mut self, cell: CellId) {
        self.seq += 1;
        self.cells.insert(cell, self.seq);
    }

    /// Whether a promise on `g` from a request with `ticket` still stands.
    fn object_holds(&self, g: &GFid, ticket: Ticket) -> bool {
        let after = |seq: Option<u64>| seq.is_some_and(|s| s > ticket.0);
        ticket.0 >= self.forgotten_below
            && !after(self.objects.get(g).map(|(s, _)| *s))
            && !after(self.cells.get(&g.cell).copied())
    }

    /// Whether a volume promise from a request with `ticket` still stands.
    fn volume_holds(&self, cell: CellId, volume: VolumeId, ticket: Ticket) -> bool {
        let after = |seq: Option<u64>| seq.is_some_and(|s| s > ticket.0);
        !after(self.volumes.get(&(cell, volume)).copied()) && !after(self.cells.get(&cell).copied())
    }
}

/// Forgets the entries older than [`REMEMBER`], and then the oldest until at most half of
/// [`MOST`] are left (a burst of changes must not make every later one scan a full log);
/// returns the newest sequence number forgotten.
fn forget_old(entries: &mut HashMap<GFid, (u64, Instant)>) -> u64 {
    let now = Instant::now();
    let mut seqs: Vec<u64> = entries.values().map(|(seq, _)| *seq).collect();
    let excess = seqs.len().saturating_sub(MOST / 2);
    // Every entry below this goes, however young.
    let below = if excess > 0 { *seqs.select_nth_unstable(excess).1 } else { 0 };
    let mut forgotten = 0;
    entries.retain(|_, (seq, at)| {
        let keep = *seq >= below && now.duration_since(*at) < REMEMBER;
        if !keep {
            forgotten = forgotten.max(*seq);
        }
        keep
    });
    forgotten
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Fid, ObjectId};

    fn g(n: u128) -> GFid {
        GFid::new(CellId(1), Fid::new(VolumeId(2), ObjectId(n)))
    }

    #[test]
    fn a_break_after_the_request_was_sent_voids_its_promise_and_only_that_one() {
        let mut log = BreakLog::default();
        let before = log.ticket();
        log.object_broken(g(1));
        let after = log.ticket();
        assert!(!log.object_holds(&g(1), before), "the break overtook the reply");
        assert!(log.object_holds(&g(2), before), "another object is not concerned");
        assert!(log.object_holds(&g(1), after), "a request sent after the break stands");
        log.volume_broken(CellId(1), VolumeId(2));
        assert!(!log.volume_holds(CellId(1), VolumeId(2), after));
        assert!(log.volume_holds(CellId(1), VolumeId(3), after));
        log.cell_broken(CellId(1));
        assert!(!log.object_holds(&g(2), after), "lost promises void every reply in flight");
    }

    #[test]
    fn a_change_of_ours_answered_after_the_request_was_sent_keeps_its_reply_out() {
        let mut log = BreakLog::default();
        let before = log.ticket();
        log.changed_here(g(1));
        assert!(!log.unchanged_here(&g(1), before), "our store overtook the fetch");
        assert!(log.unchanged_here(&g(2), before));
        assert!(log.unchanged_here(&g(1), log.ticket()), "a fetch sent after it stands");
        assert!(log.object_holds(&g(1), before), "our own change breaks no promise");
    }

    #[test]
    fn forgetting_old_breaks_never_lets_an_old_request_trust_them() {
        let mut log = BreakLog::default();
        let old = log.ticket();
        log.object_broken(g(1));
        // Age every entry, then overflow the log so it prunes.
        for (_, at) in log.objects.values_mut() {
            *at -= REMEMBER * 2;
        }
        for n in 0..=MOST as u128 {
            log.object_broken(g(1000 + n));
        }
        assert!(!log.objects.contains_key(&g(1)));
        assert!(!log.object_holds(&g(1), old), "forgotten, and still not trusted");
    }

    #[test]
    fn a_burst_of_changes_keeps_the_log_bounded_and_trusts_nothing_it_forgot() {
        let mut log = BreakLog::default();
        let old = log.ticket();
        // All young: pruning by age alone would keep every one.
        for n in 0..=(2 * MOST) as u128 {
            log.changed_here(g(n));
        }
        assert!(log.ours.len() <= MOST, "{}", log.ours.len());
        assert!(!log.unchanged_here(&g(1), old), "forgotten, and still not trusted");
        let recent = log.ticket();
        assert!(log.unchanged_here(&g(1), recent), "a request sent after the burst stands");
    }
}
