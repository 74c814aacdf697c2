//! What venus's core asks of one cell's servers, as typed calls.
//!
//! The core never builds a `Request` or matches a `Response`: it calls these methods, and the
//! implementation does the wire work once. `net::CellConn` implements it over QUIC (with the
//! retries, relocation and reachability that involves); `remote::fake` implements it in memory,
//! so the core can be tested without a server process or a mount.

use futures_util::future::BoxFuture;
use proto::msg::{AttrCheck, Promise, VolumeValidation};
use proto::{Acl, Attr, ChunkHash, ChunkRef, DirEntry, Fid, PtsId, Record, RecordResult, Rights, ServerId};
use proto::{Token, VersionVector, VolumeId, VolumeStamp};

pub use proto::Access;
pub use proto::client::FetchedData as Data;

use crate::error::Result;
use crate::ids::CellId;

#[cfg(test)]
pub mod fake;

/// A call to the servers: resolves to the typed answer, or the error venus shows for it.
pub type Call<'a, T> = BoxFuture<'a, Result<T>>;

/// Supplies the bytes of chunk `i` of an upload, in order.
pub type ChunkSource<'a> = Box<dyn FnMut(usize) -> std::io::Result<Vec<u8>> + Send + 'a>;

/// Takes a fetched file's bytes as they arrive, verified chunk by chunk.
pub type DataSink<'a> = &'a mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send);

/// An object's attributes, with the promise on them and the caller's rights.
#[derive(Debug, Clone)]
pub struct Status {
    pub attr: Attr,
    pub promise: Promise,
    pub access: Access,
}

/// A directory's entries, with its attributes, the promise on them and the caller's rights.
#[derive(Debug, Clone)]
pub struct Dir {
    pub attr: Attr,
    pub entries: Vec<DirEntry>,
    pub promise: Promise,
    pub access: Access,
}

/// One record's outcome; `promise` covers every object it touched.
#[derive(Debug, Clone)]
pub struct Mutated {
    pub result: RecordResult,
    pub promise: Promise,
}

/// One result per record sent, in order; `promise` covers every object they touched.
#[derive(Debug, Clone)]
pub struct Reintegrated {
    pub results: Vec<RecordResult>,
    pub promise: Promise,
}

/// A directory's ACL, the names of the ids in it, and the caller's rights.
#[derive(Debug, Clone)]
pub struct AclView {
    pub acl: Acl,
    pub names: Vec<(PtsId, String)>,
    pub access: Access,
}

/// One answer per object asked about, in order; `promise` covers every one still there.
#[derive(Debug, Clone)]
pub struct Checked {
    pub results: Vec<AttrCheck>,
    pub promise: Promise,
}

/// The server's answer to a request for a write-back permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermitAnswer {
    /// The permit holds for this long from when it was asked for, unless renewed.
    Granted(std::time::Duration),
    /// Not now; ask again after this long.
    Refused(std::time::Duration),
}

/// Which server a request goes to.
#[derive(Debug, Clone, Copy)]
pub enum At {
    /// That server.
    Server(ServerId),
    /// The server holding the volume (found, and followed when it moves).
    ServerOf(VolumeId),
}

/// The servers of one cell, as the core sees them.
pub trait Remote: Send + Sync {
    fn id(&self) -> CellId;
    fn name(&self) -> &str;
    /// The cell's servers and their addresses (for `venus status` and `whereis`).
    fn servers(&self) -> Vec<(ServerId, String)>;

    // ----- reachability -----

    /// Whether the cell's location server is believed unreachable.
    fn is_down(&self) -> bool;
    /// Whether some server of the cell is believed unreachable.
    fn any_down(&self) -> bool;
    /// Whether no server that could serve `volume` is believed to answer.
    fn volume_down(&self, volume: VolumeId) -> bool;
    /// Checks whether servers that stopped answering answer again; says whether any did.
    fn probe(&self) -> BoxFuture<'_, bool>;
    /// Servers currently connected.
    fn connected(&self) -> BoxFuture<'_, Vec<ServerId>>;
    /// Closes every connection (venus is exiting).
    fn close_all(&self) -> BoxFuture<'_, ()>;

    // ----- the cell -----

    /// Trades a password for a token.
    fn login<'a>(&'a self, user: &'a str, password: &'a str, lifetime: u32) -> Call<'a, Token>;
    /// The server holding `volume`, as last known (asked when unknown).
    fn server_of(&self, volume: VolumeId) -> Call<'_, ServerId>;
    /// Asks again where `volume` is.
    fn locate(&self, volume: VolumeId) -> Call<'_, ServerId>;
    /// A volume's id and name by name; `prefer_ro` picks its read-only release if there is one.
    fn resolve_volume<'a>(&'a self, name: &'a str, prefer_ro: bool) -> Call<'a, (VolumeId, String)>;

    // ----- objects -----

    fn fetch_status(&self, fid: Fid) -> Call<'_, Status>;
    fn fetch_dir(&self, fid: Fid) -> Call<'_, Dir>;
    /// Streams a whole file to `sink`.
    fn fetch_data<'a>(&'a self, fid: Fid, sink: DataSink<'a>) -> Call<'a, Data>;
    fn fetch_acl(&self, fid: Fid) -> Call<'_, AclView>;
    /// A volume's quota and use and its server's room (`df`).
    fn volume_space(&self, volume: VolumeId) -> Call<'_, proto::msg::VolumeSpace>;
    fn set_acl_entry<'a>(&'a self, fid: Fid, who: &'a str, rights: Rights, negative: bool) -> Call<'a, Status>;

    // ----- changes -----

    /// One record, applied at once.
    fn mutate(&self, volume: VolumeId, record: Record) -> Call<'_, Mutated>;
    /// One record with the chunks it needs sent ahead of it, in one request.
    fn mutate_with_chunks<'a>(
        &'a self,
        volume: VolumeId,
        chunks: Vec<ChunkRef>,
        record: Record,
        read: ChunkSource<'a>,
    ) -> Call<'a, Mutated>;
    /// Logged records, in order: one result each.
    fn reintegrate(&self, volume: VolumeId, records: Vec<Record>) -> Call<'_, Reintegrated>;
    /// Which of `hashes` the volume's server lacks (indices into `hashes`).
    fn missing_chunks(&self, volume: VolumeId, hashes: Vec<ChunkHash>) -> Call<'_, Vec<u32>>;
    /// Sends chunks' bytes; returns how many were stored.
    fn put_chunks<'a>(&'a self, volume: VolumeId, chunks: Vec<ChunkRef>, read: ChunkSource<'a>) -> Call<'a, u32>;

    // ----- write-back permits -----

    /// Asks for (or renews) the write-back permit on a volume.
    fn request_permit(&self, volume: VolumeId) -> Call<'_, PermitAnswer>;
    /// Gives the permit on a volume back.
    fn return_permit(&self, volume: VolumeId) -> Call<'_, ()>;

    // ----- validation -----

    fn validate_volumes(&self, at: ServerId, volumes: Vec<(VolumeId, VolumeStamp)>) -> Call<'_, Vec<VolumeValidation>>;
    fn validate_attrs(&self, at: At, objects: Vec<(Fid, VersionVector)>) -> Call<'_, Checked>;
}
