//! Volume dumps: a portable, versioned, checksummed stream of a volume (or of what changed in it
//! since a time), and restoring one.
//!
//! ```text
//! dump   := MAGIC record* end
//! record := u32 LE length, postcard(DumpRecord)
//! ```
//! A header comes first; then every object, each preceded by the chunks of its contents that the
//! dump has not carried yet (so a chunk shared by many files travels once); an incremental dump
//! then lists every object the volume still has, so the restore knows what was removed; `End`
//! closes it with the counts and the blake3 hash of every byte before it. A restore reads and
//! checks the whole stream before it changes anything: a dump that is cut short, has a byte
//! flipped (the hash, or a chunk's own hash, disagrees) or does not parse restores nothing.

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};

use proto::msg::{VolumeInfo, VolumeKind};
use proto::{Acl, Attr, ChunkHash, ChunkRef, Fid, Name, ObjectId, ObjectKind, OpId, RemoteError, Timestamp};
use proto::{VolumeId, VolumeStamp};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError, refuse};
use crate::rows::{self, Object};
use crate::store::{Store, file_chunks};

pub const MAGIC: &[u8; 8] = b"AFSDUMP\x01";
/// The format this code writes; restores accept it and older ones it knows.
pub const FORMAT: u32 = 1;
/// The largest record: a chunk (1 MiB) or the object of a very large file (its chunk list).
const MAX_RECORD: u32 = 64 * 1024 * 1024;

/// Append-only, like the protocol's enums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DumpRecord {
    Header(DumpHeader),
    Chunk {
        hash: ChunkHash,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Object {
        attr: Attr,
        last_op: Option<OpId>,
        acl: Option<Acl>,
        /// Directories: their entries.
        entries: Vec<(Name, ObjectId, ObjectKind)>,
        /// Files: their contents.
        chunks: Vec<ChunkRef>,
    },
    /// Incremental dumps: every object the volume has at dump time.
    Present {
        objects: Vec<ObjectId>,
    },
    End {
        objects: u64,
        chunks: u64,
        digest: [u8; 32],
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpHeader {
    pub format: u32,
    pub volume: VolumeId,
    pub name: String,
    pub kind: VolumeKind,
    pub stamp: VolumeStamp,
    pub quota: u64,
    pub created: Timestamp,
    /// `Some`: only objects changed at or after this time (an incremental dump).
    pub since: Option<Timestamp>,
    pub dumped_at: Timestamp,
}

/// What a dump or restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpSummary {
    pub objects: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub stamp: VolumeStamp,
}

/// Writes records, hashing every byte.
struct Writer<'a> {
    out: &'a mut dyn Write,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl Writer<'_> {
    fn raw(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b)?;
        self.hasher.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn record(&mut self, r: &DumpRecord) -> Result<()> {
        let body = postcard::to_stdvec(r).map_err(|e| StoreError::Corrupt(format!("encoding a dump record: {e}")))?;
        self.raw(&(body.len() as u32).to_le_bytes())?;
        self.raw(&body)
    }
}

impl Store {
    /// Dumps volume `id` (only what changed at or after `since`, if given) to `out`, from one
    /// consistent snapshot of the database.
    pub fn dump(&self, id: VolumeId, since: Option<Timestamp>, out: &mut dyn Write) -> Result<DumpSummary> {
        self.dump_with(id, since, out, |_| Ok(())).map(|((), summary)| summary)
    }

    /// [`Store::dump`], also reading `at_start` from the dump's own snapshot of the database
    /// (a replicated volume's log position, which must match what the dump holds).
    pub(crate) fn dump_with<T>(
        &self,
        id: VolumeId,
        since: Option<Timestamp>,
        out: &mut dyn Write,
        at_start: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<(T, DumpSummary)> {
        self.read(|c| {
            // The snapshot starts while no change is being applied, and `dumped_at` is read
            // then: every change in the snapshot is older, every change after it newer, so an
            // incremental dump `--since dumped_at` misses nothing and repeats nothing.
            let writer = self.lock_writer();
            let dumped_at = Timestamp::now();
            let tx = c.unchecked_transaction()?; // a read snapshot: later commits are not seen
            let info = rows::load_volume(&tx, id)?.ok_or(StoreError::Refused(RemoteError::NoSuchVolume))?;
            let extra = at_start(&tx)?;
            drop(writer);
            let mut w = Writer { out, hasher: blake3::Hasher::new(), bytes: 0 };
            w.raw(MAGIC)?;
            w.record(&DumpRecord::Header(DumpHeader {
                format: FORMAT,
                volume: id,
                name: info.name.clone(),
                kind: info.kind,
                stamp: info.stamp,
                quota: info.quota,
                created: info.created,
                since,
                dumped_at,
            }))?;
            let ids = object_ids(&tx, id)?;
            let mut sent: HashSet<ChunkHash> = HashSet::new();
            let mut objects = 0u64;
            for object in &ids {
                let Some(obj) = rows::load_object(&tx, Fid::new(id, *object))? else { continue };
                if since.is_some_and(|t| obj.attr.ctime < t) {
                    continue;
                }
                let fid = obj.attr.fid;
                let chunks = if obj.kind() == ObjectKind::File { file_chunks(&tx, fid)? } else { Vec::new() };
                for ch in &chunks {
                    if sent.insert(ch.hash) {
                        let data = self.read_chunk(ch)?;
                        w.record(&DumpRecord::Chunk { hash: ch.hash, data })?;
                    }
                }
                let entries = if obj.kind() == ObjectKind::Directory { entries_of(&tx, fid)? } else { Vec::new() };
                w.record(&DumpRecord::Object { attr: obj.attr, last_op: obj.last_op, acl: obj.acl, entries, chunks })?;
                objects += 1;
            }
            if since.is_some() {
                w.record(&DumpRecord::Present { objects: ids })?;
            }
            let digest = *w.hasher.finalize().as_bytes();
            let chunks = sent.len() as u64;
            w.record(&DumpRecord::End { objects, chunks, digest })?;
            w.out.flush()?;
            Ok((extra, DumpSummary { objects, chunks, bytes: w.bytes, stamp: info.stamp }))
        })
    }

    /// Reads a whole dump, checks it, and only then applies it: a full dump becomes volume `id`
    /// named `name` of kind `kind` (replacing its contents if it exists, which needs
    /// `overwrite`), an incremental one is applied to the existing volume `id`. The volume keeps
    /// the dumped version stamp, so clients that cached it see exactly the history the dump
    /// carries (and every replica of one release carries the same stamp).
    pub fn restore(
        &self,
        input: &mut dyn Read,
        id: VolumeId,
        name: &str,
        kind: VolumeKind,
        overwrite: bool,
    ) -> Result<(VolumeInfo, DumpSummary)> {
        self.restore_as(input, id, name, kind, overwrite, None)
    }

    /// [`Store::restore`], recording a replicated volume's log position in the same
    /// transaction (a snapshot installed on a member).
    pub(crate) fn restore_as(
        &self,
        input: &mut dyn Read,
        id: VolumeId,
        name: &str,
        kind: VolumeKind,
        overwrite: bool,
        applied: Option<&[u8]>,
    ) -> Result<(VolumeInfo, DumpSummary)> {
        let parsed = read_dump(input, self)?;
        let header = &parsed.header;
        let mut conn = self.lock_writer();
        let tx = conn.transaction()?;
        let exists = rows::load_volume(&tx, id)?.is_some();
        if header.since.is_none() && exists && !overwrite {
            return refuse(RemoteError::Invalid(format!(
                "volume {name} exists: restoring a full dump over it needs --overwrite"
            )));
        }
        if header.since.is_some() && !exists {
            return refuse(RemoteError::Invalid(format!(
                "this is an incremental dump: restore a full dump of {} first",
                header.name
            )));
        }
        // Every chunk a file names must be on the server now (this dump carried it, or an
        // earlier one did).
        {
            let mut have = tx.prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1 AND len = ?2")?;
            for o in &parsed.objects {
                for ch in &o.chunks {
                    if !have.exists(params![&ch.hash.0[..], ch.len])? {
                        return refuse(RemoteError::Invalid(format!(
                            "the dump needs chunk {} it does not carry (an incremental dump on the wrong base?)",
                            ch.hash
                        )));
                    }
                }
            }
        }
        let v = id.0 as i64;
        if header.since.is_none() {
            if exists {
                clear_volume(&tx, id)?;
            } else {
                tx.execute(
                    "INSERT INTO volumes (id, name, kind, incarnation, counter, quota, used, files, dirs, created)
                     VALUES (?1, ?2, ?3, 0, 0, ?4, 0, 0, 0, ?5)",
                    params![v, name, rows::volume_kind_code(kind), header.quota as i64, header.created.as_nanos()],
                )?;
            }
        }
        for o in &parsed.objects {
            put_dumped(&tx, id, o)?;
        }
        if let Some(present) = &parsed.present {
            let keep: BTreeSet<ObjectId> = present.iter().copied().collect();
            for gone in object_ids(&tx, id)?.into_iter().filter(|o| !keep.contains(o)) {
                let blob = rows::oid(gone);
                tx.execute("DELETE FROM objects WHERE volume = ?1 AND id = ?2", params![v, blob])?;
                tx.execute("DELETE FROM dirents WHERE volume = ?1 AND dir = ?2", params![v, blob])?;
                tx.execute("DELETE FROM file_chunks WHERE volume = ?1 AND object = ?2", params![v, blob])?;
            }
        }
        if rows::load_object(&tx, Fid::root(id))?.is_none() {
            return refuse(RemoteError::Invalid("the dump has no root directory".into()));
        }
        recount(&tx, id)?;
        tx.execute(
            "UPDATE volumes SET name = ?2, incarnation = ?3, counter = ?4, kind = ?5 WHERE id = ?1",
            params![
                v,
                name,
                header.stamp.incarnation as i64,
                header.stamp.counter as i64,
                rows::volume_kind_code(kind)
            ],
        )?;
        if let Some(applied) = applied {
            crate::replicated::note_applied(&tx, id, applied)?;
        }
        let info = rows::load_volume(&tx, id)?.ok_or_else(|| StoreError::Corrupt("restored volume vanished".into()))?;
        tx.commit()?;
        Ok((info, parsed.summary))
    }
}

/// A dump read and checked in full.
struct ParsedDump {
    header: DumpHeader,
    objects: Vec<DumpedObject>,
    present: Option<Vec<ObjectId>>,
    summary: DumpSummary,
}

struct DumpedObject {
    attr: Attr,
    last_op: Option<OpId>,
    acl: Option<Acl>,
    entries: Vec<(Name, ObjectId, ObjectKind)>,
    chunks: Vec<ChunkRef>,
}

fn bad(reason: impl Into<String>) -> StoreError {
    StoreError::Refused(RemoteError::Invalid(format!("not a valid dump: {}", reason.into())))
}

/// Reads one record, adding its bytes to the running hash (all but `End`, which carries it).
fn next_record(input: &mut dyn Read, hasher: &mut blake3::Hasher) -> Result<DumpRecord> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(|_| bad("it ends before its final record (cut short?)"))?;
    let n = u32::from_le_bytes(len);
    if n > MAX_RECORD {
        return Err(bad(format!("a record of {n} bytes")));
    }
    let mut body = vec![0u8; n as usize];
    input.read_exact(&mut body).map_err(|_| bad("it ends in the middle of a record (cut short?)"))?;
    let record: DumpRecord = proto::frame::decode(&body).map_err(|e| bad(e.to_string()))?;
    if !matches!(record, DumpRecord::End { .. }) {
        hasher.update(&len);
        hasher.update(&body);
    }
    Ok(record)
}

/// The header of a dump, from its first bytes (a few KiB are enough), if they hold one.
pub fn header_of(head: &[u8]) -> Option<DumpHeader> {
    if head.get(..8) != Some(&MAGIC[..]) {
        return None;
    }
    let n = u32::from_le_bytes(head.get(8..12)?.try_into().ok()?) as usize;
    match proto::frame::decode::<DumpRecord>(head.get(12..12 + n)?) {
        Ok(DumpRecord::Header(h)) => Some(h),
        _ => None,
    }
}

/// Checks a whole dump (format, every record, every chunk's hash, the counts and the checksum)
/// without restoring it; returns its header.
pub fn verify(input: &mut dyn Read) -> Result<DumpHeader> {
    Ok(parse(input, &mut |_, _| Ok(()))?.header)
}

/// A digest of what a (full) dump holds, leaving out when it was taken: every object's
/// attributes, ACL, entries and the blake3 hash of each chunk of its contents, and the volume's
/// stamp. Two servers' copies of one replicated volume give the same digest exactly when they
/// hold the same volume (`vos dump --server` prints it).
pub fn contents_digest(input: &mut dyn Read) -> Result<blake3::Hash> {
    let parsed = parse(input, &mut |_, _| Ok(()))?;
    let mut objects = parsed.objects;
    objects.sort_by_key(|o| o.attr.fid);
    let mut hasher = blake3::Hasher::new();
    let mut add = |v: &dyn erased::Encode| -> Result<()> {
        let bytes = v.bytes()?;
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
        Ok(())
    };
    add(&parsed.header.stamp)?;
    for o in &objects {
        add(&o.attr)?;
        add(&o.acl)?;
        add(&o.entries)?;
        add(&o.chunks)?;
    }
    Ok(hasher.finalize())
}

mod erased {
    /// Postcard bytes of anything serializable, behind a trait object.
    pub trait Encode {
        fn bytes(&self) -> crate::error::Result<Vec<u8>>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn bytes(&self) -> crate::error::Result<Vec<u8>> {
            postcard::to_stdvec(self).map_err(|e| crate::error::StoreError::Corrupt(format!("encoding: {e}")))
        }
    }
}

fn read_dump(input: &mut dyn Read, store: &Store) -> Result<ParsedDump> {
    let mut upload = store.upload();
    let parsed = parse(input, &mut |chunk, data| upload.add(chunk, data))?;
    upload.commit()?;
    Ok(parsed)
}

/// Reads and checks a dump, handing each chunk (already checked against its hash) to `chunk`.
fn parse(input: &mut dyn Read, chunk: &mut dyn FnMut(ChunkRef, &[u8]) -> Result<()>) -> Result<ParsedDump> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(|_| bad("too short"))?;
    if &magic != MAGIC {
        return Err(bad("wrong magic number (not a volume dump, or a newer format)"));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&magic);
    let header = match next_record(input, &mut hasher)? {
        DumpRecord::Header(h) if h.format <= FORMAT => h,
        DumpRecord::Header(h) => return Err(bad(format!("format {} is newer than {FORMAT}", h.format))),
        _ => return Err(bad("it does not start with a header")),
    };
    let mut objects = Vec::new();
    let mut present = None;
    let mut chunks = 0u64;
    let mut bytes = 0u64;
    loop {
        let record = next_record(input, &mut hasher)?;
        match record {
            DumpRecord::Header(_) => return Err(bad("a second header")),
            DumpRecord::Chunk { hash, data } => {
                // Checked against its hash here; recorded only if the whole dump is good.
                if ChunkHash::of(&data) != hash || data.len() > proto::chunk::MAX_CHUNK as usize {
                    return Err(bad(format!("chunk {hash} does not match its hash")));
                }
                let c = ChunkRef { hash, len: data.len() as u32 };
                chunk(c, &data)?;
                chunks += 1;
                bytes += data.len() as u64;
            }
            DumpRecord::Object { attr, last_op, acl, entries, chunks: file } => {
                if let Some(acl) = &acl
                    && let Err(e) = acl.validate()
                {
                    return Err(bad(e));
                }
                objects.push(DumpedObject { attr, last_op, acl, entries, chunks: file })
            }
            DumpRecord::Present { objects } => present = Some(objects),
            DumpRecord::End { objects: n, chunks: c, digest } => {
                if *hasher.finalize().as_bytes() != digest {
                    return Err(bad("its checksum does not match its contents (damaged?)"));
                }
                if n != objects.len() as u64 || c != chunks {
                    return Err(bad("its counts do not match its contents"));
                }
                let mut rest = [0u8; 1];
                if input.read(&mut rest)? != 0 {
                    return Err(bad("bytes after its final record"));
                }
                break;
            }
        }
    }
    if header.since.is_some() != present.is_some() {
        return Err(bad("an incremental dump must list the objects present (and only it)"));
    }
    let summary = DumpSummary { objects: objects.len() as u64, chunks, bytes, stamp: header.stamp };
    Ok(ParsedDump { header, objects, present, summary })
}

fn object_ids(c: &Connection, id: VolumeId) -> Result<Vec<ObjectId>> {
    let mut stmt = c.prepare_cached("SELECT id FROM objects WHERE volume = ?1 ORDER BY id")?;
    let ids =
        stmt.query_map(params![id.0 as i64], |r| r.get::<_, Vec<u8>>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
    ids.iter().map(|b| rows::oid_from(b)).collect()
}

fn entries_of(c: &Connection, dir: Fid) -> Result<Vec<(Name, ObjectId, ObjectKind)>> {
    let mut stmt =
        c.prepare_cached("SELECT name, child, kind FROM dirents WHERE volume = ?1 AND dir = ?2 ORDER BY name")?;
    let mut rs = stmt.query(params![dir.volume.0 as i64, rows::oid(dir.object)])?;
    let mut out = Vec::new();
    while let Some(r) = rs.next()? {
        let name = Name::new(r.get::<_, String>(0)?).map_err(|e| StoreError::Corrupt(format!("stored name: {e}")))?;
        out.push((name, rows::oid_from(&r.get::<_, Vec<u8>>(1)?)?, rows::kind_from(r.get(2)?)?));
    }
    Ok(out)
}

fn clear_volume(c: &Connection, id: VolumeId) -> Result<()> {
    let v = id.0 as i64;
    c.execute("DELETE FROM objects WHERE volume = ?1", params![v])?;
    c.execute("DELETE FROM dirents WHERE volume = ?1", params![v])?;
    c.execute("DELETE FROM file_chunks WHERE volume = ?1", params![v])?;
    Ok(())
}

/// Writes one dumped object into volume `id` (its entries and contents replace any it had).
fn put_dumped(c: &Connection, id: VolumeId, o: &DumpedObject) -> Result<()> {
    let mut attr = o.attr.clone();
    attr.fid = Fid::new(id, attr.fid.object);
    let obj = Object { attr, last_op: o.last_op, acl: o.acl.clone() };
    rows::put_object(c, &obj)?;
    let (v, me) = (id.0 as i64, rows::oid(obj.id()));
    if obj.kind() == ObjectKind::Directory {
        c.execute("DELETE FROM dirents WHERE volume = ?1 AND dir = ?2", params![v, me])?;
        let mut ins =
            c.prepare_cached("INSERT INTO dirents (volume, dir, name, child, kind) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for (name, child, kind) in &o.entries {
            ins.execute(params![v, me, name.as_str(), rows::oid(*child), rows::kind_code(*kind)])?;
        }
    }
    if obj.kind() == ObjectKind::File {
        c.execute("DELETE FROM file_chunks WHERE volume = ?1 AND object = ?2", params![v, me])?;
        let mut ins =
            c.prepare_cached("INSERT INTO file_chunks (volume, object, seq, hash, len) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for (seq, ch) in o.chunks.iter().enumerate() {
            ins.execute(params![v, me, seq as i64, &ch.hash.0[..], ch.len])?;
        }
    }
    Ok(())
}

/// Recomputes a volume's counters from its objects.
pub(crate) fn recount(c: &Connection, id: VolumeId) -> Result<()> {
    let v = id.0 as i64;
    let (file, dir) = (rows::kind_code(ObjectKind::File), rows::kind_code(ObjectKind::Directory));
    c.execute(
        "UPDATE volumes SET
            used = (SELECT COALESCE(SUM(size), 0) FROM objects WHERE volume = ?1 AND kind = ?2),
            files = (SELECT COUNT(*) FROM objects WHERE volume = ?1 AND kind = ?2),
            dirs = (SELECT COUNT(*) FROM objects WHERE volume = ?1 AND kind = ?3)
         WHERE id = ?1",
        params![v, file, dir],
    )?;
    Ok(())
}
