//! The per-volume sender: connected changes leave the log for the server in log order, and
//! those that queue up while one is on its way go together, in one request (one server
//! transaction and one durable commit for all of them).
//!
//! There is no sender task: the first change to find its volume's queue idle sends, and keeps
//! sending what queued behind it until the queue is empty; the others wait for their answer. A
//! lone change goes exactly as before (`Mutate`, or `PutChunksAndMutate` with a small file's
//! bytes); a batch is `Reintegrate`, after the chunks its stores carry. A batch holds one
//! user's changes (a request carries one token).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use proto::{ChunkRef, Record, VolumeId};
use tokio::sync::oneshot;

use super::lock;
use super::store::ChunkReader;
use crate::error::{Result, VenusError};
use crate::ids::CellId;
use crate::remote::{Mutated, Remote};

/// Changes per request, at most (the server takes up to 4,096 records in a batch).
const BATCH: usize = 256;

/// A change waiting to be sent.
pub(crate) struct Outgoing {
    pub record: Record,
    /// A small file's bytes, sent with its store.
    pub chunks: Option<(Vec<ChunkRef>, ChunkReader)>,
    uid: u32,
    answer: oneshot::Sender<Result<Mutated>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Outgoing>,
    /// Someone is sending: what queues now goes with its next request.
    sending: bool,
}

/// One volume's queue, shared by the changes in it.
type Shared = Arc<Mutex<Queue>>;

/// The queues of every volume.
#[derive(Default)]
pub(crate) struct Senders {
    queues: Mutex<HashMap<(CellId, VolumeId), Shared>>,
}

/// Hands the queue back if the sender stops early (its task dropped mid-request): the next
/// change sends. Disarmed once the queue was found empty, which hands it back itself (another
/// change may be sending by then).
struct Sending<'a>(Option<&'a Mutex<Queue>>);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if let Some(queue) = self.0 {
            lock(queue).sending = false;
        }
    }
}

impl Senders {
    /// Queues `record` (after `log`, run under the queue's lock so that the queue's order is
    /// the log's) and returns its answer: sent by this call if the volume was idle, else by the
    /// call sending when it was queued.
    pub async fn send(
        &self,
        conn: &dyn Remote,
        volume: VolumeId,
        record: Record,
        chunks: Option<(Vec<ChunkRef>, ChunkReader)>,
        log: impl FnOnce(&Record) -> Result<()>,
    ) -> Result<Mutated> {
        let queue = lock(&self.queues).entry((conn.id(), volume)).or_default().clone();
        let (answer, answered) = oneshot::channel();
        let lead = {
            let mut q = lock(&queue);
            log(&record)?;
            let uid = crate::user::current_uid();
            q.waiting.push_back(Outgoing { record, chunks, uid, answer });
            !std::mem::replace(&mut q.sending, true)
        };
        if lead {
            let mut sending = Sending(Some(&queue));
            while let Some(batch) = next_batch(&queue) {
                let uid = batch[0].uid;
                crate::user::as_user(uid, ship(conn, volume, batch)).await;
            }
            sending.0 = None;
        }
        answered.await.unwrap_or_else(|_| Err(VenusError::Unreachable("the change's sender stopped".into())))
    }
}

/// The oldest changes of one user, up to a batch; `None` (and the queue idle) when none wait.
fn next_batch(queue: &Mutex<Queue>) -> Option<Vec<Outgoing>> {
    let mut q = lock(queue);
    let uid = match q.waiting.front() {
        Some(first) => first.uid,
        None => {
            q.sending = false;
            return None;
        }
    };
    let mut batch = Vec::new();
    while batch.len() < BATCH && q.waiting.front().is_some_and(|o| o.uid == uid) {
        batch.extend(q.waiting.pop_front());
    }
    Some(batch)
}

/// Sends one batch and gives each change its answer.
async fn ship(conn: &dyn Remote, volume: VolumeId, mut batch: Vec<Outgoing>) {
    if batch.len() == 1 {
        let Some(one) = batch.pop() else { return };
        let answer = match one.chunks {
            None => conn.mutate(volume, one.record).await,
            Some((chunks, mut read)) => {
                conn.mutate_with_chunks(volume, chunks, one.record, Box::new(move |i| read.read(i))).await
            }
        };
        let _ = one.answer.send(answer);
        return;
    }
    // The bytes small stores carry go first; a store whose bytes did not make it is answered
    // with why, and the others go on.
    let mut going = Vec::with_capacity(batch.len());
    for mut o in batch {
        if let Some((chunks, mut read)) = o.chunks.take()
            && let Err(e) = conn.put_chunks(volume, chunks, Box::new(move |i| read.read(i))).await
        {
            let _ = o.answer.send(Err(e));
            continue;
        }
        going.push(o);
    }
    if going.is_empty() {
        return;
    }
    let records: Vec<Record> = going.iter().map(|o| o.record.clone()).collect();
    match conn.reintegrate(volume, records).await {
        Ok(done) => {
            for (o, result) in going.into_iter().zip(done.results) {
                let _ = o.answer.send(Ok(Mutated { result, promise: done.promise }));
            }
        }
        Err(e) => {
            for o in going {
                let _ = o.answer.send(Err(same_failure(&e)));
            }
        }
    }
}

/// The failure of a batch, for each change in it: unreachable stays unreachable (the change
/// stays in the log), a refusal stays the refusal, anything else is told as it was.
fn same_failure(e: &VenusError) -> VenusError {
    match e {
        VenusError::Unreachable(why) => VenusError::Unreachable(why.clone()),
        VenusError::Remote(r) => VenusError::Remote(r.clone()),
        other => VenusError::Protocol(other.to_string()),
    }
}
