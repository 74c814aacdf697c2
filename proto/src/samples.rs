//! One well-formed example of every message shape that crosses the network, for the fuzzers
//! (which mutate them) and for tests that replay malformed frames against a live server; and
//! reproducible file contents for chunking tests.
//!
//! Test data only: compiled for this crate's tests, and for other crates' tests through the
//! `samples` feature, which they enable in their `[dev-dependencies]`. Programs never contain it.

use crate::attr::{Attr, DirEntry, ObjectKind, SetAttrs, Timestamp};
use crate::auth::{Access, Acl, PtsId, Rights, TokenBody, TokenKey};
use crate::chunk::{ChunkHash, ChunkRef};
use crate::ids::{ClientId, Fid, ObjectId, OpId, ServerId, VolumeId};
use crate::msg::*;
use crate::name::Name;
use crate::record::{Applied, Base, ConflictKind, Mutation, Record, Seen};
use crate::version::{VersionVector, VolumeStamp};

/// `len` reproducible bytes that look random (xorshift): contents that chunk like real data
/// (zeros would be one chunk), the same for every run with one `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn fid() -> Fid {
    Fid::new(VolumeId(7), ObjectId(0x1234_5678_9abc))
}

fn name(s: &str) -> Name {
    // The literals below are valid names.
    Name::new(s).unwrap_or_else(|_| unreachable!())
}

fn attr() -> Attr {
    Attr {
        fid: fid(),
        kind: ObjectKind::File,
        mode: 0o644,
        owner: 2,
        group: 0,
        size: 5,
        nlink: 1,
        mtime: Timestamp { secs: 1, nanos: 2 },
        ctime: Timestamp { secs: 3, nanos: 4 },
        version: VersionVector::first(ServerId(1)),
        parent: Some(ObjectId(1)),
        link: Some("target".into()),
    }
}

fn chunk() -> ChunkRef {
    ChunkRef { hash: ChunkHash([9; 32]), len: 65_536 }
}

/// Every kind of mutation record.
pub fn mutations() -> Vec<Mutation> {
    let (parent, t) = (fid(), Timestamp { secs: 5, nanos: 6 });
    let seen = Seen { object: ObjectId(77), base: Base::AfterOp(OpId(3)) };
    vec![
        Mutation::Store {
            fid: fid(),
            base: Base::Version(VersionVector::first(ServerId(1))),
            chunks: vec![chunk()],
            mtime: t,
        },
        Mutation::SetAttr {
            fid: fid(),
            base: Base::AfterOp(OpId(1)),
            set: SetAttrs { mode: Some(0o600), owner: Some(1), group: None, mtime: Some(t) },
        },
        Mutation::Create {
            parent,
            name: name("a"),
            object: ObjectId(0x10000),
            mode: 0o644,
            owner: 0,
            group: 0,
            mtime: t,
        },
        Mutation::MakeDir {
            parent,
            name: name("d"),
            object: ObjectId(0x10001),
            mode: 0o755,
            owner: 0,
            group: 0,
            mtime: t,
        },
        Mutation::Symlink {
            parent,
            name: name("s"),
            object: ObjectId(0x10002),
            target: "../x".into(),
            owner: 0,
            group: 0,
            mtime: t,
        },
        Mutation::Link { parent, name: name("l"), target: ObjectId(0x10000) },
        Mutation::Remove { parent, name: name("a"), seen: seen.clone() },
        Mutation::RemoveDir { parent, name: name("d"), object: ObjectId(0x10001) },
        Mutation::Rename {
            from: parent,
            from_name: name("a"),
            object: ObjectId(5),
            to: parent,
            to_name: name("b"),
            replaced: Some(seen),
        },
        Mutation::MakeMountPoint {
            parent,
            name: name("m"),
            object: ObjectId(0x10003),
            target: "#cell:vol".into(),
            owner: 0,
            mtime: t,
        },
        Mutation::MakeNode {
            parent,
            name: name("p"),
            object: ObjectId(0x10004),
            kind: crate::attr::NodeKind::Fifo,
            mode: 0o600,
            owner: 0,
            group: 0,
            mtime: t,
        },
    ]
}

/// Every request, once anonymous and once with a token.
pub fn calls() -> Vec<Call> {
    let record = |m| Record { op: OpId(42), mutation: m };
    let mut requests = vec![
        Request::Hello { client: ClientId(1), protocol: PROTOCOL_VERSION, host: "laptop".into() },
        Request::FetchStatus { fid: fid() },
        Request::FetchData { fid: fid() },
        Request::FetchDir { fid: fid() },
        Request::MissingChunks { volume: VolumeId(7), hashes: vec![ChunkHash([1; 32]), ChunkHash([2; 32])] },
        Request::PutChunks { volume: VolumeId(7), chunks: vec![chunk()] },
        Request::Reintegrate { volume: VolumeId(7), records: mutations().into_iter().map(record).collect() },
        Request::ValidateVolumes { volumes: vec![(VolumeId(7), VolumeStamp { incarnation: 1, counter: 2 })] },
        Request::GiveUpCallBacks { fids: vec![fid()] },
        Request::GetVolumeLocation { volume: VolumeRef::Name("root.cell".into()) },
        Request::GetVolumeLocation { volume: VolumeRef::Id(VolumeId(7)) },
        Request::ListServers,
        Request::CreateVolume { name: "vol".into(), quota: 1 << 30 },
        Request::RemoveVolume { name: "vol".into() },
        Request::ListVldb,
        Request::ExamineVolume { name: "vol".into() },
        Request::ListVolumes,
        Request::Login { user: "alice".into(), password: "secret password".into(), lifetime: 60 },
        Request::FetchAcl { fid: fid() },
        Request::SetAclEntry { fid: fid(), who: "bob".into(), rights: Rights::READ | Rights::LOOKUP, negative: true },
        Request::PtsCreateUser { name: "carol".into(), password: "carol password".into(), id: None },
        Request::PtsCreateGroup { name: "carol:g".into() },
        Request::PtsAddUser { user: "carol".into(), group: "carol:g".into() },
        Request::PtsRemoveUser { user: "carol".into(), group: "carol:g".into() },
        Request::PtsDelete { name: "carol".into() },
        Request::PtsMembership { name: "carol".into() },
        Request::PtsListEntries,
        Request::PtsSetPassword { user: "carol".into(), password: "another one".into() },
        Request::DumpVolume { name: "vol".into(), since: Some(Timestamp { secs: 9, nanos: 0 }) },
        Request::CloneVolumeHere {
            source: VolumeId(7),
            id: VolumeId(9),
            name: "vol.backup".into(),
            kind: VolumeKind::Backup,
        },
        Request::SetQuota { name: "vol".into(), quota: 1 << 20 },
        Request::VldbRename { name: "vol".into(), new_name: "vol2".into() },
        Request::ValidateAttrs { objects: vec![(fid(), VersionVector::first(ServerId(1)))] },
        Request::JoinCell { address: "127.0.0.1:7001".into(), fingerprint: "b3:00".into() },
        Request::AllocateVolumeId,
        Request::VldbCreate { entry: vldb_entry() },
        Request::VldbUpdate { old: vldb_entry(), new: VldbEntry { ro: None, ..vldb_entry() } },
        Request::CreateVolumeHere { id: VolumeId(9), name: "vol".into(), quota: 0 },
        Request::RestoreVolumeHere {
            id: VolumeId(9),
            name: "vol.readonly".into(),
            overwrite: true,
            kind: VolumeKind::ReadOnly,
        },
        Request::FreezeVolume { id: VolumeId(9), frozen: true },
        Request::VolumeMovedAway { id: VolumeId(9) },
        Request::RemoveVolumeHere { id: VolumeId(9) },
        Request::RenameVolumeHere { id: VolumeId(9), name: "vol2".into() },
        Request::PutChunksAndMutate {
            chunks: vec![chunk()],
            record: record(Mutation::Store {
                fid: fid(),
                base: Base::Version(VersionVector::first(ServerId(1))),
                chunks: vec![chunk()],
                mtime: Timestamp { secs: 1, nanos: 0 },
            }),
        },
        Request::ListServerStatus,
        Request::TakeLock { volume: "vol".into(), purpose: "vos move".into(), ttl_secs: 15 },
        Request::RenewLock { fence: fence() },
        Request::ReleaseLock { fence: fence() },
        Request::NoteUnfinished {
            fence: fence(),
            unfinished: Some(Unfinished::Move {
                id: VolumeId(7),
                from: ServerId(1),
                to: ServerId(2),
                backup: Some(VolumeId(9)),
            }),
        },
        Request::Fenced { fence: fence(), request: Box::new(Request::FreezeVolume { id: VolumeId(7), frozen: true }) },
        Request::RequestPermit { volume: VolumeId(7) },
        Request::ReturnPermit { volume: VolumeId(7) },
        Request::Raft { volume: VolumeId(7), call: crate::msg::RaftCall::Append, len: 12 },
        Request::ReadChunks { chunks: vec![] },
        Request::JoinGroup { volume: VolumeId(7) },
        Request::CreateReplicated {
            id: VolumeId(7),
            name: "vol".into(),
            quota: 0,
            members: vec![ServerId(1), ServerId(2)],
        },
        Request::ChangeReplicas { name: "vol".into(), add: Some(ServerId(3)), remove: None },
        Request::ExamineGroup { volume: VolumeId(7) },
        Request::LeaveGroup { volume: VolumeId(7) },
    ];
    requests.extend(mutations().into_iter().map(|m| Request::Mutate { record: record(m) }));
    let token = TokenKey::from_hex(&"ab".repeat(32)).map(|k| {
        k.issue(TokenBody {
            cell: "example.org".into(),
            user: PtsId(2),
            name: "alice".into(),
            issued: 1,
            expires: 2,
            groups: vec![PtsId(-205)],
        })
    });
    let mut out = Vec::new();
    for request in requests {
        out.push(Call { token: None, request: request.clone() });
        out.push(Call { token: token.clone().ok(), request });
    }
    out
}

/// Every response shape.
pub fn responses() -> Vec<Response> {
    let promise = Promise { secs: 7200 };
    let access = Access { caller: Rights::ALL, anyuser: Rights::LOOKUP };
    let applied =
        Applied { attrs: vec![attr()], removed: vec![ObjectId(3)], stamp: VolumeStamp { incarnation: 1, counter: 9 } };
    let entry = VldbEntry {
        name: "vol".into(),
        rw: VolumeId(7),
        ro: Some(VolumeId(8)),
        backup: None,
        sites: vec![Site { server: ServerId(1), role: SiteRole::ReadWrite }],
    };
    let server = ServerInfo { id: ServerId(1), address: "127.0.0.1:7000".into(), fingerprint: "b3:00".into() };
    let info = VolumeInfo {
        id: VolumeId(7),
        name: "vol".into(),
        kind: VolumeKind::ReadWrite,
        stamp: VolumeStamp { incarnation: 1, counter: 2 },
        used: 10,
        quota: 0,
        files: 1,
        directories: 1,
        created: Timestamp { secs: 1, nanos: 0 },
    };
    let pts = PtsEntry { id: PtsId(-205), name: "alice:friends".into(), members: vec!["bob".into()] };
    let mut acl = Acl::volume_default();
    let _ = acl.set(PtsId(3), Rights::WRITE, true);
    vec![
        Response::Error(RemoteError::Conflict(ConflictKind::VersionChanged {
            current: VersionVector::first(ServerId(2)),
        })),
        Response::Error(RemoteError::BadToken("expired".into())),
        Response::Hello { server: ServerId(1), cell: "example.org".into() },
        Response::Status { attr: attr(), promise, access },
        Response::Data { attr: attr(), chunks: vec![chunk()], promise, access },
        Response::Dir {
            attr: attr(),
            entries: vec![DirEntry { name: name("x"), object: ObjectId(5), kind: ObjectKind::Directory }],
            promise,
            access,
        },
        Response::Missing { indices: vec![0, 3] },
        Response::ChunksStored { stored: 2 },
        Response::Applied { result: Ok(applied.clone()), promise },
        Response::Applied {
            result: Err(RemoteError::Conflict(ConflictKind::NameTaken { existing: ObjectId(4) })),
            promise,
        },
        Response::Reintegrated { results: vec![Ok(applied), Err(RemoteError::PermissionDenied)], promise },
        Response::Validated {
            volumes: vec![VolumeValidation { volume: VolumeId(7), stamp: None, valid: false, promise: Some(promise) }],
        },
        Response::Done,
        Response::Location { entry: entry.clone(), servers: vec![server.clone()] },
        Response::Servers { servers: vec![server.clone()] },
        Response::Vldb { entries: vec![entry.clone()] },
        Response::Volume { info: info.clone(), entry: Some(entry) },
        Response::Volumes { volumes: vec![info.clone()] },
        Response::Acl { acl, names: vec![(PtsId(3), "bob".into())], access },
        Response::PtsEntry { entry: pts.clone() },
        Response::PtsEntries { entries: vec![pts] },
        Response::Dumping { stamp: VolumeStamp { incarnation: 3, counter: 4 } },
        Response::Restored { info: info.clone(), objects: 1, chunks: 2, bytes: 3 },
        Response::Joined {
            server: ServerId(2),
            cell: "example.org".into(),
            token_key: "00".repeat(32),
            admins: vec!["b3:11".into()],
            servers: vec![server.clone()],
        },
        Response::VolumeIdAllocated { id: VolumeId(10) },
        Response::AttrsValidated {
            results: vec![
                AttrCheck::Same { access },
                AttrCheck::Changed { attr: attr(), access },
                AttrCheck::Gone,
                AttrCheck::Denied,
                AttrCheck::Current { attr: attr(), access },
            ],
            promise,
        },
        Response::ServerStatus {
            servers: vec![ServerStatus { info: server.clone(), alive: true, since: 5 }],
            cell_db: "etcd (http://127.0.0.1:2379)".into(),
        },
        Response::Locked { fence: fence(), ttl_secs: 15, unfinished: None },
        Response::Error(RemoteError::StaleFence("old".into())),
        Response::Permit { lease_secs: 10 },
        Response::PermitRefused { retry_secs: 5 },
        Response::Raft { body: vec![1, 2, 3] },
        Response::ChunksFollow,
        Response::Group {
            status: crate::msg::GroupStatus {
                volume: VolumeId(7),
                server: ServerId(1),
                leader: Some(ServerId(2)),
                term: 3,
                last_log: Some(9),
                applied: Some(8),
                members: vec![crate::msg::GroupMember { server: ServerId(2), voter: true, matched: Some(9) }],
                stopped: None,
            },
        },
        Response::Error(RemoteError::NotLeader(Some(ServerId(2)))),
    ]
}

fn fence() -> Fence {
    Fence { volume: "vol".into(), token: 42 }
}

pub fn pushes() -> Vec<Push> {
    vec![
        Push::BreakCallbacks { fids: vec![fid(), fid()], volumes: vec![VolumeId(7)] },
        Push::Recall { volume: VolumeId(7) },
    ]
}

fn vldb_entry() -> VldbEntry {
    VldbEntry {
        name: "vol".into(),
        rw: VolumeId(7),
        ro: Some(VolumeId(8)),
        backup: Some(VolumeId(9)),
        sites: vec![
            Site { server: ServerId(1), role: SiteRole::ReadWrite },
            Site { server: ServerId(2), role: SiteRole::ReadOnly },
            Site { server: ServerId(3), role: SiteRole::NewReadOnly },
        ],
    }
}
