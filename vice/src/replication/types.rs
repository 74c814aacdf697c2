//! What a replicated volume's log carries and what applying an entry answers.

use std::collections::BTreeSet;

use proto::auth::{Access, PtsId, Rights};
use proto::msg::VolumeInfo;
use proto::{Acl, Attr, ChunkRef, ClientId, Fid, Record, RecordResult, RemoteError, VolumeId};
use serde::{Deserialize, Serialize};
use volumes::Caller;
use volumes::replicated::{Birth, Decided};

openraft::declare_raft_types!(
    /// One volume's consensus group: nodes are the cell's servers (by id), entries are changes.
    pub Replication:
        D = Change,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<Replication>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A small chunk's bytes, carried in the entry that names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inline {
    pub chunk: ChunkRef,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// One entry of a volume's log: a change every member applies the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The group's volume comes to be (its first entry).
    Create {
        name: String,
        quota: u64,
        acl: Acl,
        birth: Birth,
    },
    /// Mutation records from one client (a `Mutate`, `PutChunksAndMutate` or `Reintegrate`),
    /// as the leader decided them.
    Batch {
        caller: Caller,
        client: ClientId,
        only: Option<VolumeId>,
        inline: Vec<Inline>,
        records: Vec<Record>,
        decided: Decided,
    },
    SetAcl {
        caller: Caller,
        fid: Fid,
        who: PtsId,
        rights: Rights,
        negative: bool,
        now: proto::Timestamp,
    },
    SetQuota {
        quota: u64,
    },
    Rename {
        name: String,
    },
}

impl Change {
    /// The chunks the entry names that do not travel in it: each member must hold them.
    pub fn named_chunks(&self) -> Vec<ChunkRef> {
        let Change::Batch { records, inline, decided, .. } = self else { return Vec::new() };
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, r) in records.iter().enumerate() {
            // A store the leader found chunks missing for is refused on every member.
            if decided.missing.get(i).copied().unwrap_or(0) > 0 {
                continue;
            }
            if let proto::Mutation::Store { chunks, .. } = &r.mutation {
                for c in chunks {
                    let carried = inline.iter().any(|i| i.chunk == *c);
                    if !carried && seen.insert((c.hash, c.len)) {
                        out.push(*c);
                    }
                }
            }
        }
        out
    }
}

/// What applying one entry answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Outcome {
    /// Blank and membership entries.
    #[default]
    Nothing,
    Created(VolumeInfo),
    Batch {
        results: Vec<RecordResult>,
        changed: BTreeSet<Fid>,
        volumes: BTreeSet<VolumeId>,
    },
    Acl {
        attr: Attr,
        access: Access,
    },
    Done,
    /// The change was refused (the same on every member).
    Refused(RemoteError),
}
