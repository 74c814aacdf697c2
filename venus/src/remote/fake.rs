//! An in-memory cell for the core's tests: one read-write volume, `root.cell`, served to any
//! number of cores at once. Changes follow the server's rules (`proto::rules`, the same code the
//! real store runs), applied records are remembered by op id, and promises are kept per client
//! and broken (delivered, and waited for) before the writer is answered, as vice does. Each
//! client's [`Link`] has a switch that cuts it off: every call then fails as unreachable, as if
//! the network were gone. Nothing here touches a disk.
//!
//! With permits on ([`FakeCell::grant_permits`]) the cell grants write-back permits as vice does
//! (one holder at a time, another client's promises broken at the grant) and recalls one before
//! it serves any other client: it pushes `Recall` to the holder and waits until the permit is
//! given back. A holder that is cut off loses it at once (its lease is taken as run out).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use proto::msg::{AttrCheck, Promise, Push, VolumeValidation};
use proto::rules::{self, Entry, Node, Tree};
use proto::{Access, Applied, Attr, ChunkHash, ChunkRef, ClientId, DirEntry, Fid, Mutation, Name, ObjectId};
use proto::{ObjectKind, OpId, Record, RecordResult, RemoteError, Rights, ServerId, Timestamp, Token};
use proto::{VersionVector, VolumeId, VolumeStamp};

use super::Status;
use super::{
    AclView, At, Call, Checked, ChunkSource, Data, DataSink, Dir, Mutated, PermitAnswer, Reintegrated, Remote,
};
use crate::error::{Result, VenusError};
use crate::ids::CellId;
use crate::net::{Context, Events};

/// The cell's one volume.
pub const VOLUME: VolumeId = VolumeId(1);
const SERVER: ServerId = ServerId(1);
const PROMISE: Promise = Promise { secs: 3600 };
const PERMIT_LEASE: std::time::Duration = std::time::Duration::from_secs(15);

/// Every caller may do anything; anyone may read.
fn access() -> Access {
    Access { caller: Rights::ALL, anyuser: Rights::READ | Rights::LOOKUP }
}

struct Obj {
    attr: Attr,
    entries: BTreeMap<Name, (ObjectId, ObjectKind)>,
    chunks: Vec<ChunkRef>,
    last_op: Option<OpId>,
}

#[derive(Default)]
struct State {
    objects: HashMap<ObjectId, Obj>,
    chunks: HashMap<ChunkHash, Vec<u8>>,
    stamp: VolumeStamp,
    applied: HashMap<OpId, Applied>,
    /// Who holds a promise on what.
    held: HashMap<ObjectId, HashSet<ClientId>>,
    volume_held: HashSet<ClientId>,
    clients: HashMap<ClientId, Client>,
    /// Who holds the volume's write-back permit.
    holder: Option<ClientId>,
    /// Whether its recall was sent.
    recalled: bool,
}

/// A client as the cell knows it: where its breaks go, and whether it can be reached.
struct Client {
    cell: CellId,
    events: Arc<dyn Events>,
    down: Arc<AtomicBool>,
    /// A break could not reach it: every promise it held is void, and its next request is
    /// told so (as vice answers `CallbacksLost`).
    lost: bool,
}

/// The cell, shared by every client's [`Link`].
pub struct FakeCell {
    name: String,
    state: Mutex<State>,
    /// Requests answered, by every client.
    pub calls: AtomicU64,
    /// Requests that carried changes (`Mutate`, `PutChunksAndMutate`, `Reintegrate`).
    pub change_requests: AtomicU64,
    /// How long a request carrying changes waits before it is answered (a slow link).
    latency_ms: AtomicU64,
    /// Whether write-back permits are granted.
    permits: AtomicBool,
    /// Permits given back or taken back.
    permit_ended: tokio::sync::Notify,
    /// Recalls sent.
    pub recalls: AtomicU64,
    /// Permits granted (a holder asking again for the one it holds is not counted).
    pub grants: AtomicU64,
}

/// How long a recall is waited for before the permit is taken back (a lease, short: nothing
/// here should need it but a holder that cannot send).
const RECALL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One client's way to the cell.
pub struct Link {
    cell: Arc<FakeCell>,
    id: CellId,
    client: ClientId,
    down: Arc<AtomicBool>,
    events: Arc<dyn Events>,
}

impl FakeCell {
    /// A cell whose volume holds an empty root directory.
    pub fn new(name: &str) -> Arc<FakeCell> {
        let now = Timestamp::now();
        let root = Attr {
            fid: Fid::root(VOLUME),
            kind: ObjectKind::Directory,
            mode: 0o755,
            owner: 0,
            group: 0,
            size: 0,
            nlink: 2,
            mtime: now,
            ctime: now,
            version: VersionVector::first(SERVER),
            parent: Some(ObjectId::ROOT),
            link: None,
        };
        let mut state = State { stamp: VolumeStamp { incarnation: 7, counter: 1 }, ..State::default() };
        state
            .objects
            .insert(ObjectId::ROOT, Obj { attr: root, entries: BTreeMap::new(), chunks: vec![], last_op: None });
        Arc::new(FakeCell {
            name: name.to_string(),
            state: Mutex::new(state),
            calls: AtomicU64::new(0),
            change_requests: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            permits: AtomicBool::new(false),
            permit_ended: tokio::sync::Notify::new(),
            recalls: AtomicU64::new(0),
            grants: AtomicU64::new(0),
        })
    }

    /// Grants write-back permits from now on.
    pub fn grant_permits(&self) {
        self.permits.store(true, Ordering::SeqCst);
    }

    fn end_permit(&self, s: &mut State) {
        s.holder = None;
        s.recalled = false;
        self.permit_ended.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes are answered this long after they arrive (they apply at once).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.latency_ms.store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// A client's link, for `Venus::with_remotes`; breaks for the client go to `with.events`.
    pub fn link(self: &Arc<Self>, id: CellId, with: Context) -> Arc<Link> {
        let down = Arc::new(AtomicBool::new(false));
        let client = Client { cell: id, events: with.events.clone(), down: down.clone(), lost: false };
        self.lock().clients.insert(with.client, client);
        Arc::new(Link { cell: self.clone(), id, client: with.client, down, events: with.events })
    }

    /// A file's contents as the server has them, by path from the root (`None`: no such file).
    pub fn read(&self, path: &[&str]) -> Option<Vec<u8>> {
        let s = self.lock();
        let mut at = ObjectId::ROOT;
        for name in path {
            at = s.objects.get(&at)?.entries.get(&Name::new(*name).ok()?)?.0;
        }
        let obj = s.objects.get(&at)?;
        (obj.attr.kind == ObjectKind::File).then(|| s.contents(obj))
    }
}

impl State {
    fn contents(&self, obj: &Obj) -> Vec<u8> {
        obj.chunks.iter().flat_map(|c| self.chunks.get(&c.hash).cloned().unwrap_or_default()).collect()
    }

    fn obj(&self, fid: Fid) -> std::result::Result<&Obj, RemoteError> {
        if fid.volume != VOLUME {
            return Err(RemoteError::NoSuchVolume);
        }
        self.objects.get(&fid.object).ok_or(RemoteError::NotFound)
    }

    fn promise(&mut self, client: ClientId, object: ObjectId) -> Promise {
        self.held.entry(object).or_default().insert(client);
        PROMISE
    }

    /// Applies one record for `client`; returns its result and who must hear of it (each
    /// client, with the objects it held promises on, and whether it held the volume's).
    fn apply(&mut self, client: ClientId, record: &Record) -> (RecordResult, Breaks) {
        if let Some(done) = self.applied.get(&record.op) {
            return (Ok(done.clone()), Breaks::default());
        }
        match self.carry_out(record) {
            Ok(applied) => {
                self.applied.insert(record.op, applied.clone());
                let touched: Vec<ObjectId> =
                    applied.attrs.iter().map(|a| a.fid.object).chain(applied.removed.iter().copied()).collect();
                let breaks = self.breaks_for(client, &touched);
                for a in &applied.attrs {
                    self.promise(client, a.fid.object);
                }
                (Ok(applied), breaks)
            }
            Err(e) => (Err(e), Breaks::default()),
        }
    }

    fn carry_out(&mut self, record: &Record) -> std::result::Result<Applied, RemoteError> {
        let m = &record.mutation;
        if m.volume() != VOLUME {
            return Err(RemoteError::NoSuchVolume);
        }
        let plan = rules::check(&*self, m)?;
        if let Mutation::Store { chunks, .. } = m {
            let missing = chunks.iter().filter(|c| !self.chunks.contains_key(&c.hash)).count();
            if missing > 0 {
                return Err(RemoteError::MissingChunks(missing as u32));
            }
        }
        let now = Timestamp::now();
        for d in &plan.unlinked {
            if let Some(dir) = self.objects.get_mut(&d.dir) {
                dir.entries.remove(&d.name);
            }
        }
        if let Some(new) = &plan.created {
            let attr = new.attr(VOLUME, now, VersionVector::first(SERVER));
            let obj = Obj { attr, entries: BTreeMap::new(), chunks: vec![], last_op: Some(record.op) };
            self.objects.insert(new.object, obj);
        }
        for d in &plan.linked {
            if let Some(dir) = self.objects.get_mut(&d.dir) {
                dir.entries.insert(d.name.clone(), (d.object, d.kind));
            }
        }
        for t in &plan.touched {
            if let Some(obj) = self.objects.get_mut(&t.object) {
                t.apply(&mut obj.attr, now);
                if t.stamp {
                    rules::stamp(&mut obj.attr.version, &mut obj.last_op, record.op, SERVER);
                }
            }
        }
        match m {
            Mutation::Store { fid, chunks, mtime, .. } => {
                if let Some(obj) = self.objects.get_mut(&fid.object) {
                    obj.chunks = chunks.clone();
                    obj.attr.size = proto::chunk::total_len(chunks);
                    obj.attr.mtime = *mtime;
                }
            }
            Mutation::SetAttr { fid, set, .. } => {
                if let Some(obj) = self.objects.get_mut(&fid.object) {
                    let a = &mut obj.attr;
                    rules::set_attrs(set, &mut a.mode, &mut a.owner, &mut a.group, &mut a.mtime);
                }
            }
            _ => {}
        }
        for gone in &plan.deleted {
            self.objects.remove(gone);
        }
        self.stamp.counter += 1;
        let attrs = plan.touched.iter().filter_map(|t| self.objects.get(&t.object)).map(|o| o.attr.clone()).collect();
        Ok(Applied { attrs, removed: plan.deleted.clone(), stamp: self.stamp })
    }

    /// Every other client holding a promise on `touched` (or on the volume) loses it.
    fn breaks_for(&mut self, writer: ClientId, touched: &[ObjectId]) -> Breaks {
        let mut out: HashMap<ClientId, (Vec<Fid>, bool)> = HashMap::new();
        for object in touched {
            if let Some(holders) = self.held.get_mut(object) {
                for c in holders.iter().filter(|c| **c != writer) {
                    out.entry(*c).or_default().0.push(Fid::new(VOLUME, *object));
                }
                holders.retain(|c| *c == writer);
            }
        }
        for c in self.volume_held.iter().filter(|c| **c != writer) {
            out.entry(*c).or_default().1 = true;
        }
        self.volume_held.retain(|c| *c == writer);
        let mut to = Vec::new();
        for (c, (fids, volume)) in out {
            let Some(client) = self.clients.get_mut(&c) else { continue };
            if client.down.load(Ordering::SeqCst) {
                // Unreachable: it loses every promise, and hears of it when it is back.
                client.lost = true;
                self.held.values_mut().for_each(|h| {
                    h.remove(&c);
                });
                continue;
            }
            let volumes = if volume { vec![VOLUME] } else { vec![] };
            to.push((client.cell, client.events.clone(), Push::BreakCallbacks { fids, volumes }));
        }
        Breaks(to)
    }
}

/// Breaks to deliver before a writer is answered.
#[derive(Default)]
struct Breaks(Vec<(CellId, Arc<dyn Events>, Push)>);

impl Breaks {
    /// Delivers them all and waits until each client's kernel view is forgotten, as vice waits
    /// for the acks.
    async fn deliver(self) {
        for (cell, events, push) in self.0 {
            events.push(cell, push).wait(std::time::Duration::from_secs(5)).await;
        }
    }
}

impl Tree for State {
    type Error = RemoteError;

    fn node(&self, id: ObjectId) -> std::result::Result<Option<Node>, RemoteError> {
        Ok(self.objects.get(&id).map(|o| Node {
            kind: o.attr.kind,
            nlink: o.attr.nlink,
            parent: o.attr.parent,
            version: o.attr.version.clone(),
            last_op: o.last_op,
        }))
    }

    fn entry(&self, dir: ObjectId, name: &Name) -> std::result::Result<Option<Entry>, RemoteError> {
        Ok(self
            .objects
            .get(&dir)
            .and_then(|d| d.entries.get(name))
            .map(|(object, kind)| Entry { object: *object, kind: *kind }))
    }

    fn is_empty(&self, dir: ObjectId) -> std::result::Result<bool, RemoteError> {
        Ok(self.objects.get(&dir).is_none_or(|d| d.entries.is_empty()))
    }
}

impl Link {
    /// Cuts the client off (`true`) or lets it through again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Fails as a dead network would, or counts the call. A client whose promises were voided
    /// while it was away is told first, as venus's connection tells the core of
    /// `CallbacksLost`.
    fn reach(&self) -> Result<MutexGuard<'_, State>> {
        if self.down.load(Ordering::SeqCst) {
            return Err(VenusError::Unreachable("the fake cell is cut off".into()));
        }
        self.cell.calls.fetch_add(1, Ordering::Relaxed);
        let lost = self.cell.lock().clients.get_mut(&self.client).is_some_and(|c| std::mem::take(&mut c.lost));
        if lost {
            self.events.callbacks_lost(self.id);
        }
        Ok(self.cell.lock())
    }

    fn answer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> std::result::Result<T, RemoteError> + Send + 'static,
    ) -> Call<'_, T> {
        async move {
            self.enter().await;
            self.reach().and_then(|mut s| f(&mut s).map_err(VenusError::Remote))
        }
        .boxed()
    }

    /// Waits until this client may be served: another's permit is recalled first, and waited
    /// for until it is given back (at once if its holder is cut off).
    async fn enter(&self) {
        let deadline = tokio::time::Instant::now() + RECALL_WAIT;
        loop {
            let ended = self.cell.permit_ended.notified();
            let recall = {
                let mut s = self.cell.lock();
                let Some(holder) = s.holder.filter(|h| *h != self.client) else { return };
                let down = s.clients.get(&holder).is_none_or(|c| c.down.load(Ordering::SeqCst));
                if down || tokio::time::Instant::now() >= deadline {
                    self.cell.end_permit(&mut s);
                    return;
                }
                match (std::mem::replace(&mut s.recalled, true), s.clients.get(&holder)) {
                    (false, Some(c)) => Some((c.cell, c.events.clone())),
                    _ => None,
                }
            };
            if let Some((cell, events)) = recall {
                self.cell.recalls.fetch_add(1, Ordering::Relaxed);
                events.push(cell, Push::Recall { volume: VOLUME }).wait(std::time::Duration::from_secs(5)).await;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), ended).await;
        }
    }

    /// Applies records in order and delivers the breaks they cause before answering.
    fn apply_all(&self, records: Vec<Record>) -> BoxFuture<'_, Result<Vec<(RecordResult, Promise)>>> {
        async move {
            self.enter().await;
            self.apply_now(records).await
        }
        .boxed()
    }

    async fn apply_now(&self, records: Vec<Record>) -> Result<Vec<(RecordResult, Promise)>> {
        let applied = self.reach().map(|mut s| {
            let mut breaks = Breaks::default();
            let results: Vec<(RecordResult, Promise)> = records
                .iter()
                .map(|r| {
                    let (result, b) = s.apply(self.client, r);
                    breaks.0.extend(b.0);
                    (result, PROMISE)
                })
                .collect();
            (results, breaks)
        });
        self.cell.change_requests.fetch_add(1, Ordering::Relaxed);
        let latency = std::time::Duration::from_millis(self.cell.latency_ms.load(Ordering::Relaxed));
        let (results, breaks) = applied?;
        breaks.deliver().await;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        Ok(results)
    }
}

impl Remote for Link {
    fn id(&self) -> CellId {
        self.id
    }

    fn name(&self) -> &str {
        &self.cell.name
    }

    fn servers(&self) -> Vec<(ServerId, String)> {
        vec![(SERVER, "memory".into())]
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    fn any_down(&self) -> bool {
        self.is_down()
    }

    fn volume_down(&self, _volume: VolumeId) -> bool {
        self.is_down()
    }

    fn probe(&self) -> BoxFuture<'_, bool> {
        let up = !self.is_down();
        async move { up }.boxed()
    }

    fn connected(&self) -> BoxFuture<'_, Vec<ServerId>> {
        let up = !self.is_down();
        async move { if up { vec![SERVER] } else { vec![] } }.boxed()
    }

    fn close_all(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }

    fn login<'a>(&'a self, _user: &'a str, _password: &'a str, _lifetime: u32) -> Call<'a, Token> {
        async { Err(VenusError::Unsupported("the fake cell has no logins")) }.boxed()
    }

    fn server_of(&self, _volume: VolumeId) -> Call<'_, ServerId> {
        async { Ok(SERVER) }.boxed()
    }

    fn locate(&self, volume: VolumeId) -> Call<'_, ServerId> {
        self.server_of(volume)
    }

    fn resolve_volume<'a>(&'a self, name: &'a str, _prefer_ro: bool) -> Call<'a, (VolumeId, String)> {
        let name = name.to_string();
        self.answer(move |_| match name.as_str() {
            "root.cell" => Ok((VOLUME, name)),
            _ => Err(RemoteError::NoSuchVolume),
        })
    }

    fn fetch_status(&self, fid: Fid) -> Call<'_, Status> {
        let client = self.client;
        self.answer(move |s| {
            let attr = s.obj(fid)?.attr.clone();
            Ok(Status { attr, promise: s.promise(client, fid.object), access: access() })
        })
    }

    fn fetch_dir(&self, fid: Fid) -> Call<'_, Dir> {
        let client = self.client;
        self.answer(move |s| {
            let obj = s.obj(fid)?;
            if obj.attr.kind != ObjectKind::Directory {
                return Err(RemoteError::NotDirectory);
            }
            let entries = obj
                .entries
                .iter()
                .map(|(name, (object, kind))| DirEntry { name: name.clone(), object: *object, kind: *kind })
                .collect();
            let attr = obj.attr.clone();
            Ok(Dir { attr, entries, promise: s.promise(client, fid.object), access: access() })
        })
    }

    fn fetch_data<'a>(&'a self, fid: Fid, sink: DataSink<'a>) -> Call<'a, Data> {
        let client = self.client;
        async move {
            self.enter().await;
            let fetched = self.reach().and_then(|mut s| {
                let obj = s.obj(fid).map_err(VenusError::Remote)?;
                let (attr, chunks, bytes) = (obj.attr.clone(), obj.chunks.clone(), s.contents(obj));
                Ok((Data { attr, chunks, promise: s.promise(client, fid.object), access: access() }, bytes))
            });
            let (data, bytes) = fetched?;
            sink(&bytes)?;
            Ok(data)
        }
        .boxed()
    }

    fn fetch_acl(&self, _fid: Fid) -> Call<'_, AclView> {
        async { Err(VenusError::Unsupported("the fake cell has no ACLs")) }.boxed()
    }

    fn volume_space(&self, _volume: VolumeId) -> Call<'_, proto::msg::VolumeSpace> {
        async { Err(VenusError::Unsupported("the fake cell has no quotas")) }.boxed()
    }

    fn set_acl_entry<'a>(&'a self, _fid: Fid, _who: &'a str, _rights: Rights, _negative: bool) -> Call<'a, Status> {
        async { Err(VenusError::Unsupported("the fake cell has no ACLs")) }.boxed()
    }

    fn mutate(&self, _volume: VolumeId, record: Record) -> Call<'_, Mutated> {
        let applied = self.apply_all(vec![record]);
        async move {
            let (result, promise) = applied.await?.pop().ok_or(VenusError::NotFound)?;
            Ok(Mutated { result, promise })
        }
        .boxed()
    }

    fn mutate_with_chunks<'a>(
        &'a self,
        volume: VolumeId,
        chunks: Vec<ChunkRef>,
        record: Record,
        read: ChunkSource<'a>,
    ) -> Call<'a, Mutated> {
        async move {
            self.put_chunks(volume, chunks, read).await?;
            self.mutate(volume, record).await
        }
        .boxed()
    }

    fn reintegrate(&self, _volume: VolumeId, records: Vec<Record>) -> Call<'_, Reintegrated> {
        let applied = self.apply_all(records);
        async move {
            let results = applied.await?.into_iter().map(|(r, _)| r).collect();
            Ok(Reintegrated { results, promise: PROMISE })
        }
        .boxed()
    }

    fn missing_chunks(&self, _volume: VolumeId, hashes: Vec<ChunkHash>) -> Call<'_, Vec<u32>> {
        self.answer(move |s| {
            Ok(hashes.iter().enumerate().filter(|(_, h)| !s.chunks.contains_key(h)).map(|(i, _)| i as u32).collect())
        })
    }

    fn put_chunks<'a>(&'a self, _volume: VolumeId, chunks: Vec<ChunkRef>, mut read: ChunkSource<'a>) -> Call<'a, u32> {
        async move {
            self.enter().await;
            let mut got = Vec::with_capacity(chunks.len());
            for (i, c) in chunks.iter().enumerate() {
                let bytes = read(i)?;
                if proto::ChunkHash::of(&bytes) != c.hash {
                    return Err(VenusError::Protocol("a chunk does not match its hash".into()));
                }
                got.push((c.hash, bytes));
            }
            let mut s = self.reach()?;
            let stored = got.len() as u32;
            s.chunks.extend(got);
            Ok(stored)
        }
        .boxed()
    }

    fn request_permit(&self, volume: VolumeId) -> Call<'_, PermitAnswer> {
        let me = self.client;
        async move {
            let refused = PermitAnswer::Refused(std::time::Duration::from_millis(100));
            let breaks = {
                let mut s = self.reach()?;
                if !self.cell.permits.load(Ordering::SeqCst) || volume != VOLUME {
                    return Ok(PermitAnswer::Refused(std::time::Duration::from_secs(3600)));
                }
                match s.holder {
                    Some(h) if h == me && !s.recalled => return Ok(PermitAnswer::Granted(PERMIT_LEASE)),
                    Some(_) => return Ok(refused),
                    None => {}
                }
                s.holder = Some(me);
                self.cell.grants.fetch_add(1, Ordering::Relaxed);
                // Nobody else may trust what it cached of the volume while the holder changes it.
                let objects: Vec<ObjectId> = s.held.keys().copied().collect();
                s.breaks_for(me, &objects)
            };
            breaks.deliver().await;
            Ok(PermitAnswer::Granted(PERMIT_LEASE))
        }
        .boxed()
    }

    fn return_permit(&self, _volume: VolumeId) -> Call<'_, ()> {
        let me = self.client;
        async move {
            let mut s = self.reach()?;
            if s.holder == Some(me) {
                self.cell.end_permit(&mut s);
            }
            Ok(())
        }
        .boxed()
    }

    fn validate_volumes(
        &self,
        _at: ServerId,
        volumes: Vec<(VolumeId, VolumeStamp)>,
    ) -> Call<'_, Vec<VolumeValidation>> {
        let client = self.client;
        self.answer(move |s| {
            Ok(volumes
                .into_iter()
                .map(|(volume, known)| {
                    let stamp = (volume == VOLUME).then_some(s.stamp);
                    let valid = stamp == Some(known);
                    if valid {
                        s.volume_held.insert(client);
                    }
                    VolumeValidation { volume, stamp, valid, promise: valid.then_some(PROMISE) }
                })
                .collect())
        })
    }

    fn validate_attrs(&self, _at: At, objects: Vec<(Fid, VersionVector)>) -> Call<'_, Checked> {
        let client = self.client;
        self.answer(move |s| {
            let results = objects
                .into_iter()
                .map(|(fid, version)| match s.obj(fid).map(|o| o.attr.clone()) {
                    Err(_) => AttrCheck::Gone,
                    Ok(attr) => {
                        s.promise(client, fid.object);
                        if attr.version.same_as(&version) {
                            AttrCheck::Current { attr, access: access() }
                        } else {
                            AttrCheck::Changed { attr, access: access() }
                        }
                    }
                })
                .collect();
            Ok(Checked { results, promise: PROMISE })
        })
    }
}
