//! Golden bytes: the encoding of messages must not change by accident. If one of these fails,
//! a variant was inserted or reordered: append new variants at the end instead.

use crate::ids::*;
use crate::msg::*;
use crate::record::*;
use crate::{ChunkHash, ChunkRef, Name, Timestamp, VersionVector};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn enc<T: serde::Serialize>(v: &T) -> String {
    hex(&postcard::to_stdvec(v).unwrap())
}

#[test]
fn golden_bytes() {
    let fid = Fid::new(VolumeId(2), ObjectId(3));
    assert_eq!(enc(&Request::FetchStatus { fid }), "010203");
    assert_eq!(enc(&Request::FetchData { fid }), "020203");
    assert_eq!(enc(&Request::ListVolumes), "10");
    assert_eq!(enc(&Call { token: None, request: Request::FetchStatus { fid } }), "00010203");
    assert_eq!(enc(&Request::PtsListEntries), "1a");
    assert_eq!(enc(&Response::Error(RemoteError::NotFound)), "0000");
    assert_eq!(enc(&Response::Error(RemoteError::CrossDirectoryLink)), "0018");
    assert_eq!(enc(&Response::Error(RemoteError::NoSpace)), "0019");
    assert_eq!(enc(&Response::Done), "0a");
    // Appended in protocol 5.
    assert_eq!(enc(&Response::Error(RemoteError::StaleFence(String::new()))), "001b00");
    assert_eq!(enc(&Request::ListServerStatus), "2d");
    let rec = Record {
        op: OpId(5),
        mutation: Mutation::Store {
            fid,
            base: Base::Version(VersionVector::first(ServerId(1))),
            chunks: vec![ChunkRef { hash: ChunkHash([0; 32]), len: 7 }],
            mtime: Timestamp { secs: 1, nanos: 0 },
        },
    };
    assert_eq!(enc(&rec), format!("050002030001010101{}070200", "00".repeat(32)));
    let rm = Mutation::Remove {
        parent: fid,
        name: Name::new("a").unwrap(),
        seen: Seen { object: ObjectId(9), base: Base::AfterOp(OpId(4)) },
    };
    assert_eq!(enc(&rm), "06020301610901".to_string() + "04");
    // Appended in protocol 4: the eleventh mutation, and the sixth object kind.
    let fifo = Mutation::MakeNode {
        parent: fid,
        name: Name::new("p").unwrap(),
        object: ObjectId(9),
        kind: crate::attr::NodeKind::Socket,
        mode: 0o600,
        owner: 1,
        group: 2,
        mtime: Timestamp { secs: 1, nanos: 0 },
    };
    assert_eq!(enc(&fifo), "0a020301700901800301020200");
    assert_eq!(enc(&crate::attr::ObjectKind::Socket), "05");
    assert_eq!(
        enc(&Push::BreakCallbacks { fids: vec![fid], volumes: vec![VolumeId(2)] }),
        "0001020301".to_string() + "02"
    );
    // Appended in protocol 6: write-back permits.
    assert_eq!(enc(&Request::RequestPermit { volume: VolumeId(2) }), "3302");
    assert_eq!(enc(&Request::ReturnPermit { volume: VolumeId(2) }), "3402");
    assert_eq!(enc(&Response::Permit { lease_secs: 10 }), "1c0a");
    assert_eq!(enc(&Response::PermitRefused { retry_secs: 5 }), "1d05");
    assert_eq!(enc(&Push::Recall { volume: VolumeId(2) }), "0102");
}

#[test]
fn request_meta_names_are_all_listed() {
    let fid = Fid::new(VolumeId(1), ObjectId(1));
    let samples = [
        Request::FetchStatus { fid },
        Request::FetchData { fid },
        Request::FetchDir { fid },
        Request::ListVldb,
        Request::Reintegrate { volume: VolumeId(1), records: vec![] },
    ];
    for r in samples {
        assert!(REQUEST_NAMES.contains(&r.meta().name), "{}", r.meta().name);
    }
    assert!(Request::CreateVolume { name: "x".into(), quota: 0 }.meta().admin);
    assert!(!Request::FetchData { fid }.meta().mutates);
}

#[test]
fn error_kinds_are_their_variant_names() {
    let samples = [
        RemoteError::NotFound,
        RemoteError::Invalid("x".into()),
        RemoteError::MissingChunks(3),
        RemoteError::Conflict(crate::ConflictKind::NameTaken { existing: ObjectId(4) }),
        RemoteError::NoSpace,
        RemoteError::CellDbUnavailable("no quorum".into()),
    ];
    for e in samples {
        let debug = format!("{e:?}");
        assert_eq!(debug.split('(').next(), Some(e.kind()), "{debug}");
    }
}
