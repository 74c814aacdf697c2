//! Request and response messages of the file, volume and location services.
//!
//! Every enum here is append-only: postcard encodes a variant by its position, so inserting one
//! would change the meaning of old bytes. `tests::golden_bytes` pins the encoding.

use serde::{Deserialize, Serialize};

use crate::attr::{Attr, DirEntry};
use crate::auth::{Access, Acl, PtsId, Rights, Token};
use crate::chunk::{ChunkHash, ChunkRef};
use crate::ids::{ClientId, Fid, ServerId, VolumeId};
use crate::record::{ConflictKind, Record, RecordResult};
use crate::version::VolumeStamp;

/// Bumped when a change is not backward compatible; sent in `Hello`.
///
/// 2: every request travels in a [`Call`] with the caller's token; replies that carry attributes
/// also carry the caller's access rights.
/// 3: `ValidateAttrs` answers a current version with the attributes (`AttrCheck::Current`).
/// 4: named pipes and sockets (`ObjectKind::Fifo`/`Socket`, `Mutation::MakeNode`);
/// `GetVolumeSpace` (what `df` shows).
pub const PROTOCOL_VERSION: u32 = 7;

/// The frame a client sends to open every RPC: who is asking, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// `None`: the anonymous user (`system:anyuser` only).
    pub token: Option<Token>,
    pub request: Request,
}

/// An entry of the protection database (`pts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtsEntry {
    pub id: PtsId,
    pub name: String,
    /// For a group: its members; for a user: the groups it belongs to.
    pub members: Vec<String>,
}

/// How long a callback promise holds, relative to when the reply was sent (no clock sync needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    pub secs: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeKind {
    ReadWrite,
    ReadOnly,
    Backup,
}

/// How to name a volume in a location lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeRef {
    Name(String),
    Id(VolumeId),
}

/// A server of the cell, as the location service reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: ServerId,
    pub address: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SiteRole {
    ReadWrite,
    /// A read-only replica holding the last release; clients may read from it.
    ReadOnly,
    /// A read-only site added by `vos addsite` that has not received a release yet (or whose
    /// last release failed): clients do not use it.
    NewReadOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub server: ServerId,
    pub role: SiteRole,
}

/// A server of the cell and whether it is running (`vos listaddrs`): a running server keeps a
/// lease in the cell database alive; `alive` is false once it has lapsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub info: ServerInfo,
    pub alive: bool,
    /// When it started (Unix seconds), if alive.
    pub since: i64,
}

/// A lock on one volume's administration, held by one `vos`: `token` is the cell database's
/// revision at which it was taken (a fencing token). Servers refuse a step of an operation
/// whose lock is no longer held, so a `vos` that lost its lock (it was paused past its lease,
/// or another admin took over) can change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub volume: String,
    pub token: i64,
}

/// An operation its lock's holder began and did not finish (it died, or lost its lock); the
/// next holder of the volume's lock finishes it or rolls it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unfinished {
    /// `vos move` of the read-write volume `id` from server `from` to server `to`. Whether the
    /// location entry names `to` yet tells how far it got.
    Move { id: VolumeId, from: ServerId, to: ServerId, backup: Option<VolumeId> },
}

/// One entry of the volume location database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VldbEntry {
    pub name: String,
    pub rw: VolumeId,
    pub ro: Option<VolumeId>,
    pub backup: Option<VolumeId>,
    pub sites: Vec<Site>,
}

/// A volume as its server holds it (`vos examine`, `vos listvol`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: VolumeId,
    pub name: String,
    pub kind: VolumeKind,
    pub stamp: VolumeStamp,
    /// Bytes of file data (logical sizes).
    pub used: u64,
    /// 0 means no quota.
    pub quota: u64,
    pub files: u64,
    pub directories: u64,
    pub created: crate::attr::Timestamp,
}

/// Per-volume answer of `ValidateVolumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeValidation {
    pub volume: VolumeId,
    pub stamp: Option<VolumeStamp>,
    /// True when the client's stamp is current: everything it cached from the volume is valid.
    pub valid: bool,
    pub promise: Option<Promise>,
}

/// Append-only (see module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First request on every connection: who the client is, so callbacks can find it.
    Hello {
        client: ClientId,
        protocol: u32,
        host: String,
    },
    FetchStatus {
        fid: Fid,
    },
    /// Reply `Data`, followed by the file's bytes streamed raw, chunk after chunk.
    FetchData {
        fid: Fid,
    },
    FetchDir {
        fid: Fid,
    },
    /// Which of these chunks the server lacks (reply `Missing` with their indices).
    MissingChunks {
        volume: VolumeId,
        hashes: Vec<ChunkHash>,
    },
    /// Followed by the chunks' bytes, in order; each is verified against its hash.
    PutChunks {
        volume: VolumeId,
        chunks: Vec<ChunkRef>,
    },
    Mutate {
        record: Record,
    },
    /// An ordered batch from the client modification log, applied in one transaction.
    Reintegrate {
        volume: VolumeId,
        records: Vec<Record>,
    },
    ValidateVolumes {
        volumes: Vec<(VolumeId, VolumeStamp)>,
    },
    GiveUpCallBacks {
        fids: Vec<Fid>,
    },
    GetVolumeLocation {
        volume: VolumeRef,
    },
    ListServers,
    // Administration: refused unless the connection carries the admin credential.
    CreateVolume {
        name: String,
        quota: u64,
    },
    /// Removes a volume's location entry (and the read-write volume, if this server holds it).
    /// `vos remove` first removes the volumes from the servers holding them.
    RemoveVolume {
        name: String,
    },
    ListVldb,
    ExamineVolume {
        name: String,
    },
    ListVolumes,
    /// Trades a password for a token (`venus login`). The connection is TLS to a pinned server.
    Login {
        user: String,
        password: String,
        /// Seconds the token should last; 0 asks for the server's default. The server caps it.
        lifetime: u32,
    },
    FetchAcl {
        fid: Fid,
    },
    /// Sets one entry of a directory's ACL (`venus setacl`); no rights removes the entry. The
    /// server reads, changes and writes the ACL in one transaction, so concurrent edits of
    /// different entries never undo each other.
    SetAclEntry {
        fid: Fid,
        who: String,
        rights: Rights,
        negative: bool,
    },
    // The protection database. Changes need an administrator; anyone may look.
    PtsCreateUser {
        name: String,
        password: String,
        /// The id to give (`pts createuser --id`: AFS ids matching the site's Unix uids), or
        /// the next free one.
        id: Option<PtsId>,
    },
    PtsCreateGroup {
        name: String,
    },
    PtsAddUser {
        user: String,
        group: String,
    },
    PtsRemoveUser {
        user: String,
        group: String,
    },
    PtsDelete {
        name: String,
    },
    PtsMembership {
        name: String,
    },
    PtsListEntries,
    /// An administrator may set anyone's password; a user only their own.
    PtsSetPassword {
        user: String,
        password: String,
    },
    /// Reply `Dumping`, then the dump's bytes until the stream ends (see `volumes::dump`).
    DumpVolume {
        name: String,
        /// Only what changed at or after this time (an incremental dump).
        since: Option<crate::attr::Timestamp>,
    },
    /// Makes (or remakes) volume `id` named `name` of kind `kind` as a frozen copy of
    /// `source`, sharing its chunks (`vos backup` makes `NAME.backup` this way).
    CloneVolumeHere {
        source: VolumeId,
        id: VolumeId,
        name: String,
        kind: VolumeKind,
    },
    SetQuota {
        name: String,
        quota: u64,
    },
    /// Renames a location entry; refuses a name in use. The servers' copies are renamed with
    /// `RenameVolumeHere`.
    VldbRename {
        name: String,
        new_name: String,
    },
    /// Revalidates many cached objects at once (after their volumes' stamps moved): for each,
    /// whether the version the client holds is still current. Grants promises on every object
    /// still there.
    ValidateAttrs {
        objects: Vec<(Fid, crate::version::VersionVector)>,
    },
    // The database server: adding servers and keeping the location database; volume servers:
    // volumes in their own store. `vos` drives both, as AFS's vos drives the vlserver and the
    // volservers.
    /// Registers a new server of the cell; the reply carries what it needs to serve the cell.
    JoinCell {
        address: String,
        fingerprint: String,
    },
    AllocateVolumeId,
    VldbCreate {
        entry: VldbEntry,
    },
    /// Replaces entry `old` by `new` (same name) only if the entry is still `old`: two `vos`
    /// commands changing one volume at once cannot undo each other; the later one fails and
    /// says so.
    VldbUpdate {
        old: VldbEntry,
        new: VldbEntry,
    },
    /// Makes an empty volume in this server's store with an id the location database gave.
    CreateVolumeHere {
        id: VolumeId,
        name: String,
        quota: u64,
    },
    /// Followed by a dump's bytes until the client ends the stream; reply `Restored`. Restores
    /// into volume `id` of this server's store (`vos restore`, a move's target, a release's
    /// replica); a full dump replaces an existing volume only with `overwrite`. `name` carries
    /// the suffix of its kind (`NAME.readonly` for a replica).
    RestoreVolumeHere {
        id: VolumeId,
        name: String,
        overwrite: bool,
        kind: VolumeKind,
    },
    /// While frozen, changes to the volume are answered `VolumeBusy` (clients retry).
    FreezeVolume {
        id: VolumeId,
        frozen: bool,
    },
    /// The volume now lives elsewhere: drop it from this server's store and answer
    /// `VolumeMoved` to requests about it, so clients look it up again.
    VolumeMovedAway {
        id: VolumeId,
    },
    /// Drops a volume from this server's store only (cleaning up a failed move, removing a
    /// replica); promises on it are broken.
    RemoveVolumeHere {
        id: VolumeId,
    },
    /// Renames a volume in this server's store (the location entry is renamed by `VldbRename`).
    RenameVolumeHere {
        id: VolumeId,
        name: String,
    },
    /// `PutChunks` and then `Mutate` in one round trip: followed by the chunks' bytes; once
    /// they are stored, `record` (a `Store` naming them) is applied and answered as `Mutate`
    /// is. Small files are stored this way.
    PutChunksAndMutate {
        chunks: Vec<ChunkRef>,
        record: Record,
    },
    /// A volume's quota and use, and the room its server has (what `df` and AFS's `fs lq`
    /// show). Needs `l` on the volume's root directory.
    GetVolumeSpace {
        volume: VolumeId,
    },
    // Appended in protocol 5: the cell database's registry and locks.
    /// Every server of the cell and whether it is running (reply `ServerStatus`).
    ListServerStatus,
    /// Takes the lock on volume `volume` (a read-write volume's name) for `purpose`, under a
    /// lease of `ttl_secs` that the holder renews; reply `Locked`, or `Locked` refused when
    /// another admin holds it.
    TakeLock {
        volume: String,
        purpose: String,
        ttl_secs: u32,
    },
    RenewLock {
        fence: Fence,
    },
    ReleaseLock {
        fence: Fence,
    },
    /// Records what the lock's holder has begun (so the next holder can finish it), or clears
    /// it with `None`.
    NoteUnfinished {
        fence: Fence,
        unfinished: Option<Unfinished>,
    },
    /// `request`, done only while `fence`'s lock is held (and refused `StaleFence` otherwise).
    /// A location update under a fence is conditioned on the lock in the same transaction.
    Fenced {
        fence: Fence,
        request: Box<Request>,
    },
    // Appended in protocol 6: write-back permits.
    /// Asks for (or renews) the write-back permit on a read-write volume: while it holds, no
    /// other client reads or changes anything in the volume without the server recalling it
    /// first. Reply `Permit`, or `PermitRefused`.
    RequestPermit {
        volume: VolumeId,
    },
    /// Gives the permit back (after a recall, once everything logged under it was sent).
    ReturnPermit {
        volume: VolumeId,
    },
    // Appended in protocol 7: replicated read-write volumes (one consensus group each).
    /// Server to server: one message of replicated volume `volume`'s consensus group, `len`
    /// bytes of it following the frame (postcard). Reply `Raft`.
    Raft {
        volume: VolumeId,
        call: RaftCall,
        len: u32,
    },
    /// Server to server: the bytes of chunks this server holds, after a `ChunksFollow` reply
    /// (a member pulls what an entry names and it lacks).
    ReadChunks {
        chunks: Vec<ChunkRef>,
    },
    /// Server to server (or admin): become a member of `volume`'s group, waiting for its
    /// leader to send the log or a snapshot.
    JoinGroup {
        volume: VolumeId,
    },
    /// Admin, to the first of `members`: a new read-write volume `id` replicated on `members`
    /// (`vos` allocates the id and writes the location entry, as for `CreateVolumeHere`).
    CreateReplicated {
        id: VolumeId,
        name: String,
        quota: u64,
        members: Vec<ServerId>,
    },
    /// Admin, to the group's leader: add `add` (it catches up, then votes) and/or remove
    /// `remove` from replicated volume `name`'s group.
    ChangeReplicas {
        name: String,
        add: Option<ServerId>,
        remove: Option<ServerId>,
    },
    /// Admin: how replicated volume `volume`'s group looks from this server. Reply `Group`.
    ExamineGroup {
        volume: VolumeId,
    },
    /// Server to server (admin): leave `volume`'s group and drop the volume here.
    LeaveGroup {
        volume: VolumeId,
    },
}

/// Which consensus message a `Raft` request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftCall {
    Append,
    Vote,
    Snapshot,
}

/// A member of a replicated volume's group, as one server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub server: ServerId,
    /// Votes (false: a learner catching up).
    pub voter: bool,
    /// The last log index the leader knows this member holds (the leader's view only).
    pub matched: Option<u64>,
}

/// A replicated volume's group, as one member sees it (`vos examine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub volume: VolumeId,
    /// The member answering.
    pub server: ServerId,
    pub leader: Option<ServerId>,
    pub term: u64,
    /// The answering member's last log index and the last it applied.
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    pub members: Vec<GroupMember>,
    /// Why the group stopped on this member, if it did (a disk failure, say).
    pub stopped: Option<String>,
}

/// The room in a volume (`GetVolumeSpace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpace {
    /// The volume's stamp when measured: a client knows the answer is out of date once it sees
    /// a later one.
    pub stamp: VolumeStamp,
    /// Bytes of file data (logical sizes).
    pub used: u64,
    /// 0 means no quota.
    pub quota: u64,
    pub files: u64,
    pub directories: u64,
    /// Bytes the server will still take for new data (above its low-water mark), whatever the
    /// quota; `None` when it could not measure.
    pub server_free: Option<u64>,
}

impl VolumeSpace {
    /// Bytes that may still be written: the quota's rest, bounded by the server's room.
    pub fn free(&self) -> u64 {
        let by_quota = (self.quota > 0).then(|| self.quota.saturating_sub(self.used));
        match (by_quota, self.server_free) {
            (Some(q), Some(s)) => q.min(s),
            (Some(q), None) => q,
            (None, Some(s)) => s,
            (None, None) => u64::MAX / 2,
        }
    }

    /// The size to show: the quota, or what is used plus what is free without one.
    pub fn size(&self) -> u64 {
        if self.quota > 0 { self.quota.max(self.used) } else { self.used.saturating_add(self.free()) }
    }
}

/// What `ValidateAttrs` says of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrCheck {
    /// The client's version is current. (Protocol 2; servers now answer `Current`.)
    Same {
        access: Access,
    },
    Changed {
        attr: Attr,
        access: Access,
    },
    Gone,
    /// The caller may not look it up any more.
    Denied,
    /// The client's version is current, and these are the attributes: what changes names but
    /// not the object (its link count, its directory, its ctime) moves without a new version.
    Current {
        attr: Attr,
        access: Access,
    },
}

/// Append-only (see module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Error(RemoteError),
    Hello {
        server: ServerId,
        cell: String,
    },
    Status {
        attr: Attr,
        promise: Promise,
        access: Access,
    },
    /// The file's chunk list; `total_len(chunks)` raw bytes follow on the stream.
    Data {
        attr: Attr,
        chunks: Vec<ChunkRef>,
        promise: Promise,
        access: Access,
    },
    Dir {
        attr: Attr,
        entries: Vec<DirEntry>,
        promise: Promise,
        access: Access,
    },
    Missing {
        indices: Vec<u32>,
    },
    ChunksStored {
        stored: u32,
    },
    /// `promise` covers every object in the result's attrs: the writer holds a promise on
    /// what it just changed or created.
    Applied {
        result: RecordResult,
        promise: Promise,
    },
    Reintegrated {
        results: Vec<RecordResult>,
        promise: Promise,
    },
    Validated {
        volumes: Vec<VolumeValidation>,
    },
    Done,
    Location {
        entry: VldbEntry,
        servers: Vec<ServerInfo>,
    },
    Servers {
        servers: Vec<ServerInfo>,
    },
    Vldb {
        entries: Vec<VldbEntry>,
    },
    Volume {
        info: VolumeInfo,
        entry: Option<VldbEntry>,
    },
    Volumes {
        volumes: Vec<VolumeInfo>,
    },
    Token {
        token: Token,
    },
    /// A directory's ACL, with the names of the ids in it.
    Acl {
        acl: Acl,
        names: Vec<(PtsId, String)>,
        access: Access,
    },
    PtsEntry {
        entry: PtsEntry,
    },
    PtsEntries {
        entries: Vec<PtsEntry>,
    },
    /// A dump follows as raw bytes until the stream ends.
    Dumping {
        stamp: VolumeStamp,
    },
    Restored {
        info: VolumeInfo,
        objects: u64,
        chunks: u64,
        bytes: u64,
    },
    /// One result per object asked about, in order; `promise` covers every one still there.
    AttrsValidated {
        results: Vec<AttrCheck>,
        promise: Promise,
    },
    /// For a server joining the cell.
    Joined {
        server: ServerId,
        cell: String,
        /// The cell's token key, hex: the new server verifies tokens with it.
        token_key: String,
        admins: Vec<String>,
        servers: Vec<ServerInfo>,
    },
    VolumeIdAllocated {
        id: VolumeId,
    },
    VolumeSpace {
        space: VolumeSpace,
    },
    // Appended in protocol 5.
    ServerStatus {
        servers: Vec<ServerStatus>,
        /// Where the cell database is ("etcd (http://...)", "embedded SQLite (...)").
        cell_db: String,
    },
    Locked {
        fence: Fence,
        ttl_secs: u32,
        unfinished: Option<Unfinished>,
    },
    // Appended in protocol 6.
    /// The permit is the caller's for `lease_secs` from when it asked, unless renewed (or
    /// recalled) before.
    Permit {
        lease_secs: u32,
    },
    /// No permit now: another client uses the volume, or the server holds as many as it keeps.
    /// Ask again after `retry_secs`.
    PermitRefused {
        retry_secs: u32,
    },
    // Appended in protocol 7.
    /// The answer to a `Raft` request (postcard, the consensus library's own reply).
    Raft {
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// The bytes of the chunks asked for follow, in order.
    ChunksFollow,
    Group {
        status: GroupStatus,
    },
}

/// Messages the server pushes to a client on a stream it opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Push {
    /// Drop these promises: the objects (or anything in these volumes) changed.
    BreakCallbacks { fids: Vec<Fid>, volumes: Vec<VolumeId> },
    /// Give the write-back permit on the volume back: send what was logged under it, then
    /// `ReturnPermit`. Another client waits for it (appended in protocol 6).
    Recall { volume: VolumeId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushAck {
    Ok,
}

/// Errors a server reports to a client. Each maps to one errno on the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("directory not empty")]
    NotEmpty,
    #[error("cross-volume operation")]
    CrossVolume,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("quota exceeded")]
    QuotaExceeded,
    #[error("permission denied")]
    PermissionDenied,
    #[error("no such volume")]
    NoSuchVolume,
    #[error("volume has moved")]
    VolumeMoved,
    #[error("volume is busy; retry")]
    VolumeBusy,
    #[error("callback promises were lost; revalidate")]
    CallbacksLost,
    #[error("message too large")]
    TooLarge,
    #[error("conflict: {0}")]
    Conflict(ConflictKind),
    #[error("chunks missing on the server: {0} of them")]
    MissingChunks(u32),
    #[error("this operation needs the cell's admin credential")]
    NotAdmin,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("server error: {0}")]
    Internal(String),
    #[error("read-only volume")]
    ReadOnly,
    #[error("object id already in use")]
    DuplicateObject,
    #[error("the volume's directory tree would loop")]
    WouldLoop,
    #[error("token refused: {0}")]
    BadToken(String),
    #[error("unknown user or wrong password")]
    BadLogin,
    #[error("hard links must stay in one directory")]
    CrossDirectoryLink,
    /// The server's disk is (nearly) full: a change that would grow what it stores was refused.
    /// Changes that free space (removals) still go through.
    #[error("no space left on the server")]
    NoSpace,
    // Appended in protocol 5.
    /// Another admin holds the volume's lock.
    #[error("locked: {0}")]
    Locked(String),
    /// The request's lock is no longer held.
    #[error("stale fencing token: {0}")]
    StaleFence(String),
    /// The cell database (etcd) cannot be reached, or has no quorum.
    #[error("cell database unavailable: {0}")]
    CellDbUnavailable(String),
    // Appended in protocol 7.
    /// This server is a member of the replicated volume's group but not its leader: ask the
    /// one named (`None`: no leader is known now, as during an election or without a majority).
    #[error("not the volume's leader (ask {0:?})")]
    NotLeader(Option<ServerId>),
}

impl RemoteError {
    /// The variant's name, without its detail: a label for counting errors by kind (vice's
    /// metrics), the same for every message of one kind.
    pub fn kind(&self) -> &'static str {
        match self {
            RemoteError::NotFound => "NotFound",
            RemoteError::Exists => "Exists",
            RemoteError::NotDirectory => "NotDirectory",
            RemoteError::IsDirectory => "IsDirectory",
            RemoteError::NotEmpty => "NotEmpty",
            RemoteError::CrossVolume => "CrossVolume",
            RemoteError::Invalid(_) => "Invalid",
            RemoteError::QuotaExceeded => "QuotaExceeded",
            RemoteError::PermissionDenied => "PermissionDenied",
            RemoteError::NoSuchVolume => "NoSuchVolume",
            RemoteError::VolumeMoved => "VolumeMoved",
            RemoteError::VolumeBusy => "VolumeBusy",
            RemoteError::CallbacksLost => "CallbacksLost",
            RemoteError::TooLarge => "TooLarge",
            RemoteError::Conflict(_) => "Conflict",
            RemoteError::MissingChunks(_) => "MissingChunks",
            RemoteError::NotAdmin => "NotAdmin",
            RemoteError::Protocol(_) => "Protocol",
            RemoteError::Internal(_) => "Internal",
            RemoteError::ReadOnly => "ReadOnly",
            RemoteError::DuplicateObject => "DuplicateObject",
            RemoteError::WouldLoop => "WouldLoop",
            RemoteError::BadToken(_) => "BadToken",
            RemoteError::BadLogin => "BadLogin",
            RemoteError::CrossDirectoryLink => "CrossDirectoryLink",
            RemoteError::NoSpace => "NoSpace",
            RemoteError::Locked(_) => "Locked",
            RemoteError::StaleFence(_) => "StaleFence",
            RemoteError::CellDbUnavailable(_) => "CellDbUnavailable",
            RemoteError::NotLeader(_) => "NotLeader",
        }
    }
}

/// What a request does, for retry policy, counters and routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMeta {
    /// The protocol name used for counters (`venus status`).
    pub name: &'static str,
    pub mutates: bool,
    /// Safe to resend after a lost reply with no OpId: it changes nothing, or the OpIds inside
    /// make the replay harmless.
    pub idempotent: bool,
    pub admin: bool,
    pub volume: Option<VolumeId>,
}

impl Request {
    /// One table of every request's properties.
    pub fn meta(&self) -> RequestMeta {
        let m = |name, mutates, idempotent, admin, volume| RequestMeta { name, mutates, idempotent, admin, volume };
        match self {
            Request::Hello { .. } => m("Hello", false, true, false, None),
            Request::FetchStatus { fid } => m("FetchStatus", false, true, false, Some(fid.volume)),
            Request::FetchData { fid } => m("FetchData", false, true, false, Some(fid.volume)),
            Request::FetchDir { fid } => m("FetchDir", false, true, false, Some(fid.volume)),
            Request::MissingChunks { volume, .. } => m("MissingChunks", false, true, false, Some(*volume)),
            Request::PutChunks { volume, .. } => m("PutChunks", true, true, false, Some(*volume)),
            Request::Mutate { record } => m(record.mutation.verb(), true, true, false, Some(record.mutation.volume())),
            Request::Reintegrate { volume, .. } => m("Reintegrate", true, true, false, Some(*volume)),
            Request::ValidateVolumes { .. } => m("ValidateVolumes", false, true, false, None),
            Request::GiveUpCallBacks { .. } => m("GiveUpCallBacks", false, true, false, None),
            Request::GetVolumeLocation { .. } => m("GetVolumeLocation", false, true, false, None),
            Request::ListServers => m("ListServers", false, true, false, None),
            Request::CreateVolume { .. } => m("CreateVolume", true, false, true, None),
            Request::RemoveVolume { .. } => m("RemoveVolume", true, false, true, None),
            Request::ListVldb => m("ListVldb", false, true, true, None),
            Request::ExamineVolume { .. } => m("ExamineVolume", false, true, true, None),
            Request::ListVolumes => m("ListVolumes", false, true, true, None),
            Request::Login { .. } => m("Login", false, true, false, None),
            Request::FetchAcl { fid } => m("FetchAcl", false, true, false, Some(fid.volume)),
            Request::SetAclEntry { fid, .. } => m("SetAclEntry", true, true, false, Some(fid.volume)),
            Request::PtsCreateUser { .. } => m("PtsCreateUser", true, false, true, None),
            Request::PtsCreateGroup { .. } => m("PtsCreateGroup", true, false, true, None),
            Request::PtsAddUser { .. } => m("PtsAddUser", true, true, true, None),
            Request::PtsRemoveUser { .. } => m("PtsRemoveUser", true, true, true, None),
            Request::PtsDelete { .. } => m("PtsDelete", true, false, true, None),
            Request::PtsMembership { .. } => m("PtsMembership", false, true, false, None),
            Request::PtsListEntries => m("PtsListEntries", false, true, false, None),
            Request::PtsSetPassword { .. } => m("PtsSetPassword", true, true, false, None),
            Request::DumpVolume { .. } => m("DumpVolume", false, true, true, None),
            Request::CloneVolumeHere { .. } => m("CloneVolumeHere", true, true, true, None),
            Request::SetQuota { .. } => m("SetQuota", true, true, true, None),
            Request::VldbRename { .. } => m("VldbRename", true, false, true, None),
            Request::ValidateAttrs { .. } => m("ValidateAttrs", false, true, false, None),
            Request::JoinCell { .. } => m("JoinCell", true, false, true, None),
            Request::AllocateVolumeId => m("AllocateVolumeId", true, false, true, None),
            Request::VldbCreate { .. } => m("VldbCreate", true, false, true, None),
            Request::VldbUpdate { .. } => m("VldbUpdate", true, true, true, None),
            Request::CreateVolumeHere { .. } => m("CreateVolumeHere", true, false, true, None),
            Request::RestoreVolumeHere { .. } => m("RestoreVolumeHere", true, false, true, None),
            Request::FreezeVolume { .. } => m("FreezeVolume", true, true, true, None),
            Request::VolumeMovedAway { .. } => m("VolumeMovedAway", true, true, true, None),
            Request::RemoveVolumeHere { .. } => m("RemoveVolumeHere", true, true, true, None),
            Request::RenameVolumeHere { .. } => m("RenameVolumeHere", true, true, true, None),
            Request::PutChunksAndMutate { record, .. } => {
                m("PutChunksAndMutate", true, true, false, Some(record.mutation.volume()))
            }
            Request::GetVolumeSpace { volume } => m("GetVolumeSpace", false, true, false, Some(*volume)),
            Request::ListServerStatus => m("ListServerStatus", false, true, false, None),
            Request::TakeLock { .. } => m("TakeLock", true, false, true, None),
            Request::RenewLock { .. } => m("RenewLock", true, true, true, None),
            Request::ReleaseLock { .. } => m("ReleaseLock", true, true, true, None),
            Request::NoteUnfinished { .. } => m("NoteUnfinished", true, true, true, None),
            // Counted as what it carries; always an admin request.
            Request::Fenced { request, .. } => RequestMeta { admin: true, ..request.meta() },
            Request::RequestPermit { volume } => m("RequestPermit", false, true, false, Some(*volume)),
            Request::ReturnPermit { volume } => m("ReturnPermit", false, true, false, Some(*volume)),
            // Servers' own requests: never routed to a leader (they are the routing).
            Request::Raft { .. } => m("Raft", true, true, false, None),
            Request::ReadChunks { .. } => m("ReadChunks", false, true, false, None),
            Request::JoinGroup { .. } => m("JoinGroup", true, true, false, None),
            Request::CreateReplicated { .. } => m("CreateReplicated", true, false, true, None),
            Request::ChangeReplicas { .. } => m("ChangeReplicas", true, false, true, None),
            Request::ExamineGroup { .. } => m("ExamineGroup", false, true, true, None),
            Request::LeaveGroup { .. } => m("LeaveGroup", true, true, false, None),
        }
    }
}

/// Every request name, for counters that must exist before the first request is made.
pub const REQUEST_NAMES: &[&str] = &[
    "Hello",
    "FetchStatus",
    "FetchData",
    "FetchDir",
    "MissingChunks",
    "PutChunks",
    "Store",
    "SetAttr",
    "Create",
    "MakeDir",
    "Symlink",
    "Link",
    "Remove",
    "RemoveDir",
    "Rename",
    "MakeMountPoint",
    "Reintegrate",
    "ValidateVolumes",
    "GiveUpCallBacks",
    "GetVolumeLocation",
    "ListServers",
    "CreateVolume",
    "RemoveVolume",
    "ListVldb",
    "ExamineVolume",
    "ListVolumes",
    "Login",
    "FetchAcl",
    "SetAclEntry",
    "PtsCreateUser",
    "PtsCreateGroup",
    "PtsAddUser",
    "PtsRemoveUser",
    "PtsDelete",
    "PtsMembership",
    "PtsListEntries",
    "PtsSetPassword",
    "DumpVolume",
    "CloneVolumeHere",
    "SetQuota",
    "VldbRename",
    "ValidateAttrs",
    "JoinCell",
    "AllocateVolumeId",
    "VldbCreate",
    "VldbUpdate",
    "CreateVolumeHere",
    "RestoreVolumeHere",
    "FreezeVolume",
    "VolumeMovedAway",
    "RemoveVolumeHere",
    "RenameVolumeHere",
    "PutChunksAndMutate",
    "GetVolumeSpace",
    "ListServerStatus",
    "TakeLock",
    "RenewLock",
    "ReleaseLock",
    "NoteUnfinished",
    "RequestPermit",
    "ReturnPermit",
    "Raft",
    "ReadChunks",
    "JoinGroup",
    "CreateReplicated",
    "ChangeReplicas",
    "ExamineGroup",
    "LeaveGroup",
];

/// Checks the name a volume of `kind` has in a server's store: a valid base name with the
/// kind's suffix (`.readonly`, `.backup`) or none for a read-write volume.
pub fn validate_volume_name_of(kind: VolumeKind, name: &str) -> Result<(), RemoteError> {
    let base = match kind {
        VolumeKind::ReadWrite => Some(name),
        VolumeKind::ReadOnly => name.strip_suffix(".readonly"),
        VolumeKind::Backup => name.strip_suffix(".backup"),
    };
    match base {
        Some(base) => validate_volume_name(base),
        None => {
            let suffix = if kind == VolumeKind::ReadOnly { ".readonly" } else { ".backup" };
            Err(RemoteError::Invalid(format!("volume name {name:?}: a {kind:?} volume's name ends in {suffix}")))
        }
    }
}

/// Checks an ASCII volume name: letters, digits, `.`, `_`, `-`; the suffixes `.readonly` and
/// `.backup` are reserved for replicas and snapshots.
pub fn validate_volume_name(name: &str) -> Result<(), RemoteError> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with('.') {
        return Err(RemoteError::Invalid(format!(
            "volume name {name:?}: use 1-64 letters, digits, '.', '_' or '-', not starting with '.'"
        )));
    }
    if name.ends_with(".readonly") || name.ends_with(".backup") {
        return Err(RemoteError::Invalid(format!("volume name {name:?}: .readonly and .backup are reserved")));
    }
    Ok(())
}
