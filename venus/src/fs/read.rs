//! Reading: attributes, directory listings and whole files, from the cache while a promise
//! holds and from the server otherwise; lookups that cross mount points.

use std::io::Write;
use std::os::unix::fs::FileExt;

use std::sync::Arc;

use proto::auth::Rights;
use proto::{Attr, DirEntry, Fid, ObjectKind, RemoteError};

use super::streams::Stream;
use super::{Handle, Node, Stat, Venus};
use crate::cache::Listing;
use crate::counters;
use crate::error::{Result, VenusError};
use crate::ids::{CellId, GFid};
use crate::remote::{Dir, Status};

impl Venus {
    /// An object's attributes: cached while its promise holds, fetched otherwise.
    pub async fn status(&self, g: GFid) -> Result<Attr> {
        let (cached, orphan) = match self.cache.attr_and_orphan(&g) {
            Some((attr, orphan)) => (Some(attr), orphan),
            None => (None, false),
        };
        // An unlinked file still open is what its descriptors see; the server has no more to say.
        if let Some(a) = &cached
            && (orphan || self.valid(&g) || self.emulating(g.cell, g.fid.volume))
        {
            self.counters.add(counters::CACHE_HITS, 1);
            return Ok(a.clone());
        }
        if !self.reachable(g.cell, g.fid.volume) {
            return Err(self.miss(g));
        }
        match self.fetch_status(g).await {
            // The server just went away: what we have is what we serve.
            Err(VenusError::Unreachable(_)) => cached.ok_or_else(|| self.miss(g)),
            other => other,
        }
    }

    /// Asks the server for an object's attributes (and the current user's rights).
    pub(crate) async fn fetch_status(&self, g: GFid) -> Result<Attr> {
        let conn = self.cell(g.cell)?;
        let ticket = self.ticket();
        match conn.fetch_status(g.fid).await {
            Ok(Status { attr, promise, access }) => {
                self.note_access(g, &attr, access)?;
                let attr = self.take_fetched_attr(g.cell, attr, ticket)?;
                self.promised(g, promise, ticket);
                Ok(attr)
            }
            Err(VenusError::Remote(RemoteError::NotFound)) => {
                self.cache.remove(&g)?;
                self.unpromise(&g);
                // Removed by someone else while open here: its descriptors still see it.
                match self.cache.attr_and_orphan(&g) {
                    Some((attr, true)) => Ok(attr),
                    _ => Err(VenusError::NotFound),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A directory's entries: cached while its promise holds, fetched whole otherwise.
    pub async fn listing(&self, g: GFid) -> Result<Listing> {
        let cached = self.cache.listing(&g);
        // Known not to be a directory: say so, whether or not the server can be asked.
        if cached.is_none() && self.cache.attr(&g).is_some_and(|a| !crate::cache::shows_as_dir(a.kind)) {
            return Err(VenusError::NotDirectory);
        }
        if let Some(entries) = &cached
            && (self.valid(&g) || self.emulating(g.cell, g.fid.volume))
        {
            self.counters.add(counters::CACHE_HITS, 1);
            return Ok(entries.clone());
        }
        if !self.reachable(g.cell, g.fid.volume) {
            return Err(self.miss(g));
        }
        let conn = self.cell(g.cell)?;
        let ticket = self.ticket();
        match conn.fetch_dir(g.fid).await {
            Err(VenusError::Unreachable(_)) => cached.ok_or_else(|| self.miss(g)),
            Ok(Dir { attr, entries, promise, access }) => {
                self.note_access(g, &attr, access)?;
                let mut taken = None;
                self.promises.take_fetched(&g, ticket, || {
                    self.cache.put_attr(g.cell, attr)?;
                    taken = Some(self.cache.put_listing(g, entries.clone())?);
                    Ok::<(), VenusError>(())
                })?;
                match taken {
                    Some(listing) => {
                        self.promised(g, promise, ticket);
                        Ok(listing)
                    }
                    // A change of ours in the directory was answered after this was sent: the
                    // listing may lack it. What the cache holds (edited by that change) is
                    // newer; with nothing cached, this answer serves once and is not kept.
                    None => Ok(self.cache.listing(&g).unwrap_or_else(|| Arc::new(entries))),
                }
            }
            Err(VenusError::Remote(RemoteError::NotFound)) => {
                self.cache.remove(&g)?;
                Err(VenusError::NotFound)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes sure the container holds the current contents of a file; returns its attributes.
    pub async fn data(&self, g: GFid) -> Result<Attr> {
        let lock = self.fetch_lock(g);
        let _one_at_a_time = lock.lock().await;
        match self.fetch_whole(g).await {
            // The cache disk filled up under the fetch: make room and fetch again (once).
            Err(e) if e.is_disk_full() && self.cache.make_room() => self.fetch_whole(g).await,
            other => other,
        }
    }

    /// `data` under the object's lock.
    async fn fetch_whole(&self, g: GFid) -> Result<Attr> {
        let attr = self.status(g).await?;
        if attr.kind != ObjectKind::File {
            return Err(if attr.kind == ObjectKind::Directory {
                VenusError::IsDirectory
            } else {
                VenusError::Remote(RemoteError::Invalid("not a regular file".into()))
            });
        }
        if self.cache.get(&g).is_some_and(|c| c.has_data) {
            self.counters.add(counters::CACHE_HITS, 1);
            self.cache.touch(&g);
            return Ok(attr);
        }
        if !self.reachable(g.cell, g.fid.volume) {
            return Err(self.miss(g));
        }
        let tmp = self.room_for(g, &attr)?;
        self.fetch_into(g, &tmp, None).await
    }

    /// Makes room in the cache for a fetch of `attr`'s file, and the file to fetch it into.
    fn room_for(&self, g: GFid, attr: &Attr) -> Result<std::path::PathBuf> {
        self.counters.add(counters::CACHE_MISSES, 1);
        let priority = self.cache.get(&g).map_or(0, |c| c.priority);
        let evicted = self.cache.reserve_at(attr.size, priority)?;
        self.counters.add(counters::EVICTIONS, evicted);
        self.cache.make_temp()
    }

    /// Fetches the file into `tmp` and installs it as its container; `stream` hears of every
    /// byte as soon as it is in the file, for readers waiting on it.
    async fn fetch_into(&self, g: GFid, tmp: &std::path::Path, stream: Option<&Stream>) -> Result<Attr> {
        let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp)?);
        let conn = self.cell(g.cell)?;
        let mut fetched = 0u64;
        let ticket = self.ticket();
        let result = conn
            .fetch_data(g.fid, &mut |bytes: &[u8]| {
                fetched += bytes.len() as u64;
                file.write_all(bytes)?;
                if let Some(s) = stream {
                    file.flush()?;
                    s.advance(fetched);
                }
                Ok(())
            })
            .await;
        let fetched_data = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(tmp);
                return Err(match e {
                    VenusError::Unreachable(_) => self.miss(g),
                    other => other,
                });
            }
        };
        let (attr, promise) = (fetched_data.attr, fetched_data.promise);
        self.note_access(g, &attr, fetched_data.access)?;
        file.flush()?;
        drop(file);
        self.counters.add(counters::BYTES_FETCHED, fetched);
        let attr = self.take_fetched_attr(g.cell, attr, ticket)?;
        self.cache.install(&g, tmp, fetched)?;
        self.promised(g, promise, ticket);
        Ok(attr)
    }

    /// A read that needs the server while it cannot be reached: a clear error, logged and
    /// counted (a hoard miss).
    pub(crate) fn miss(&self, g: GFid) -> VenusError {
        self.counters.add(counters::DISCONNECTED_MISSES, 1);
        tracing::info!(object = %g, "not in the cache, and the servers cannot be reached");
        VenusError::NotCached
    }

    /// What mount point `at` (whose target is `link`) names: the cell, the volume, and
    /// whether its read-only replica is preferred. As in AFS, a regular mount point (`#vol`)
    /// reached through a read-only replica leads to the replica of `vol` if it has one; a
    /// read-write mount point (`%vol`) always leads to the read-write volume.
    pub(crate) fn mount_target<'a>(&self, at: GFid, link: &'a str) -> Result<(CellId, &'a str, bool)> {
        let regular = !link.starts_with('%');
        let body = link.strip_prefix(['#', '%']).unwrap_or(link);
        let body = body.strip_suffix('.').unwrap_or(body);
        let (cell, volume) = match body.split_once(':') {
            Some((name, vol)) => (self.cell_by_name(name).ok_or(VenusError::NotFound)?, vol),
            None => (at.cell, body),
        };
        Ok((cell, volume, regular && self.in_replica(at.cell, at.fid.volume)))
    }

    /// Where a mount point leads: the root of the volume it names.
    pub(crate) async fn cross(&self, at: GFid, mount_point: &Attr) -> Result<GFid> {
        let (cell, volume, prefer_ro) = self.mount_target(at, mount_point.link.as_deref().unwrap_or(""))?;
        let id = self.volume_id(cell, volume, prefer_ro).await?;
        Ok(GFid::new(cell, Fid::root(id)))
    }

    /// A name in the top directory: `<cell>` (its root, read-only if released) or `.<cell>`
    /// (its read-write root).
    pub(crate) fn top_name(&self, name: &str) -> Result<(CellId, bool)> {
        let (cell, writable) = match name.strip_prefix('.') {
            Some(cell) => (cell, true),
            None => (name, false),
        };
        Ok((self.cell_by_name(cell).ok_or(VenusError::NotFound)?, writable))
    }

    /// The entry `name` in directory `parent`, as the kernel should see it.
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Stat> {
        let target = match self.node(parent)? {
            Node::Root => {
                let (cell, writable) = self.top_name(name)?;
                self.cell_root(cell, writable).await?
            }
            Node::Object(p) => {
                let entries = self.listing(p).await?;
                self.require_in(p, Rights::LOOKUP).await?;
                let entry = entries.iter().find(|e| e.name.as_str() == name).ok_or(VenusError::NotFound)?;
                return self.child_stat(p, entry).await;
            }
        };
        let attr = self.status(target).await?;
        Ok(self.stat_of(target, &attr))
    }

    /// What the kernel should see for `entry` of directory `p` (mount points crossed).
    async fn child_stat(&self, p: GFid, entry: &DirEntry) -> Result<Stat> {
        let child = GFid::new(p.cell, Fid::new(p.fid.volume, entry.object));
        let target = if entry.kind == ObjectKind::MountPoint {
            let mp = self.status(child).await?;
            self.cross(child, &mp).await?
        } else {
            child
        };
        let attr = self.status(target).await?;
        Ok(self.stat_of(target, &attr))
    }

    /// A directory's entries with their attributes (readdirplus), so the kernel need not look
    /// each one up: the attributes of every child not known current come in one request. An
    /// entry whose attributes cannot be had (offline and never fetched, say) comes as `None`.
    pub async fn readdir_plus(&self, ino: u64) -> Result<Vec<(String, ObjectKind, u64, Option<Stat>)>> {
        let Node::Object(g) = self.node(ino)? else {
            let mut out = Vec::new();
            for (ino, kind, name) in self.readdir(ino).await? {
                let st = self.lookup(crate::ids::ROOT_INO, &name).await.ok();
                out.push((name, kind, ino, st));
            }
            return Ok(out);
        };
        let entries = self.listing(g).await?;
        self.require_in(g, Rights::LOOKUP).await?;
        if !self.emulating(g.cell, g.fid.volume) {
            let unknown: Vec<GFid> = entries
                .iter()
                .map(|e| GFid::new(g.cell, Fid::new(g.fid.volume, e.object)))
                .filter(|c| !self.valid(c) || self.cache.attr(c).is_none())
                .collect();
            // One lookup costs as much as one bulk request.
            if unknown.len() > 1
                && let Err(e) = self.bulk_status(g.cell, g.fid.volume, &unknown).await
            {
                tracing::debug!(dir = %g, error = %e, "bulk status failed; looking entries up one by one");
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        for e in entries.iter() {
            let st = self.child_stat(g, e).await.ok();
            let kind = if crate::cache::shows_as_dir(e.kind) { ObjectKind::Directory } else { e.kind };
            let ino = match &st {
                Some(s) => s.ino,
                None => self.register(GFid::new(g.cell, Fid::new(g.fid.volume, e.object))),
            };
            out.push((e.name.to_string(), kind, ino, st));
        }
        Ok(out)
    }

    pub async fn getattr(&self, ino: u64) -> Result<Stat> {
        match self.node(ino)? {
            Node::Root => Ok(self.root_stat()),
            Node::Object(g) => {
                let attr = self.status(g).await?;
                self.require(g, &attr, Rights::LOOKUP).await?;
                Ok(self.stat_of(g, &attr))
            }
        }
    }

    /// Directory entries as (inode, kind shown, name), without `.` and `..`.
    pub async fn readdir(&self, ino: u64) -> Result<Vec<(u64, ObjectKind, String)>> {
        match self.node(ino)? {
            Node::Root => {
                let mut out = Vec::new();
                for (name, conn) in self.cells() {
                    let ino = match self.cell_root(conn.id(), false).await {
                        Ok(g) => self.register(g),
                        // An unreachable cell is still listed; looking inside will say why.
                        Err(_) => GFid::new(conn.id(), Fid::root(proto::VolumeId(0))).ino(),
                    };
                    out.push((ino, ObjectKind::Directory, name.to_string()));
                }
                Ok(out)
            }
            Node::Object(g) => {
                let entries = self.listing(g).await?;
                self.require_in(g, Rights::LOOKUP).await?;
                Ok(entries
                    .iter()
                    .map(|e| {
                        let child = GFid::new(g.cell, Fid::new(g.fid.volume, e.object));
                        let kind = if crate::cache::shows_as_dir(e.kind) { ObjectKind::Directory } else { e.kind };
                        (self.register(child), kind, e.name.to_string())
                    })
                    .collect())
            }
        }
    }

    pub async fn readlink(&self, ino: u64) -> Result<String> {
        let g = self.object(ino)?;
        let attr = self.status(g).await?;
        self.require(g, &attr, Rights::LOOKUP).await?;
        match (attr.kind, attr.link) {
            (ObjectKind::Symlink, Some(target)) => Ok(target),
            _ => Err(VenusError::Remote(RemoteError::Invalid("not a symbolic link".into()))),
        }
    }

    /// Opens a file: fetches it whole if needed, then opens its container. A big file opened
    /// for reading opens once its first bytes are in, and the rest comes in the background
    /// (`streams.rs`).
    pub async fn open(self: &Arc<Self>, ino: u64, flags: i32) -> Result<(u64, Arc<Handle>)> {
        if flags & libc::O_ACCMODE == libc::O_RDONLY
            && let Some(opened) = self.open_streaming(self.object(ino)?).await?
        {
            return Ok(opened);
        }
        self.open_whole(ino, flags).await
    }

    /// A read-only open of a big uncached file, if this is one: joins the fetch under way or
    /// starts one, and returns once the first bytes are in. `None`: open it as usual.
    async fn open_streaming(self: &Arc<Self>, g: GFid) -> Result<Option<(u64, Arc<Handle>)>> {
        let Some(attr) = self.cache.attr(&g) else { return Ok(None) };
        let wanted = attr.kind == ObjectKind::File && attr.size >= self.stream_from && self.stream_from > 0;
        if !wanted || self.cache.get(&g).is_some_and(|c| c.has_data) || !self.reachable(g.cell, g.fid.volume) {
            return Ok(None);
        }
        let attr = self.status(g).await?;
        self.require(g, &attr, Rights::READ).await?;
        let stream = match self.streams.get(&g) {
            Some(s) => s,
            None => {
                let fetch = self.fetch_lock(g).lock_owned().await;
                // Fetched, or being streamed, by someone else while we waited.
                if self.cache.get(&g).is_some_and(|c| c.has_data) {
                    return Ok(None);
                }
                match self.streams.get(&g) {
                    Some(s) => s,
                    None => self.start_stream(g, &attr, fetch)?,
                }
            }
        };
        stream.started().await?;
        self.counters.add(counters::STREAMED_OPENS, 1);
        self.cache.opened(&g, false);
        match stream.reader() {
            Ok(file) => Ok(Some(self.add_handle(Handle::streaming(g, file, stream)))),
            Err(e) => {
                let _ = self.cache.closed(&g, false);
                Err(e.into())
            }
        }
    }

    /// Starts the background fetch of a file being opened, holding its fetch lock throughout.
    fn start_stream(
        self: &Arc<Self>,
        g: GFid,
        attr: &Attr,
        fetch: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Arc<Stream>> {
        let tmp = self.room_for(g, attr)?;
        let stream = Arc::new(Stream::new(std::fs::File::open(&tmp)?));
        self.streams.insert(g, stream.clone());
        let (venus, s) = (self.clone(), stream.clone());
        tokio::spawn(async move {
            let result = venus.fetch_into(g, &tmp, Some(&s)).await.map(drop);
            if let Err(e) = &result {
                tracing::info!(object = %g, error = %e, "the fetch of a file open for reading stopped");
            }
            // Whole (installed) or failed before it leaves the table: an open that finds it
            // gone finds the file cached, or fetches it again.
            s.finish(&result);
            venus.streams.remove(&g);
            drop(fetch);
        });
        Ok(stream)
    }

    /// Opens a file fetched whole first.
    pub(crate) async fn open_whole(&self, ino: u64, flags: i32) -> Result<(u64, Arc<Handle>)> {
        let g = self.object(ino)?;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let readable = flags & libc::O_ACCMODE != libc::O_WRONLY;
        if writable {
            self.writable(g)?;
        }
        let attr = self.status(g).await?;
        if attr.kind == ObjectKind::File {
            let need = match (readable, writable) {
                (true, true) => Rights::READ | Rights::WRITE,
                (false, true) => Rights::WRITE,
                _ => Rights::READ,
            };
            self.require(g, &attr, need).await?;
        }
        self.data(g).await?;
        // Counted open before the container is: from here on it is neither evicted nor reused.
        self.cache.opened(&g, writable);
        let truncate = writable && flags & libc::O_TRUNC != 0;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(self.cache.container(&g))
            .and_then(|file| if truncate { file.set_len(0).map(|()| file) } else { Ok(file) });
        let file = match opened {
            Ok(file) => file,
            Err(e) => {
                let _ = self.cache.closed(&g, writable);
                return Err(e.into());
            }
        };
        Ok(self.add_handle(Handle::new(g, file, writable, truncate)))
    }

    /// A read answered at once, or `None` if it is of a file still coming in whose bytes are not
    /// there yet (then [`Venus::read_when_in`] waits for them).
    pub fn read_now(&self, fh: u64, offset: u64, size: u32) -> Option<Result<Vec<u8>>> {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        if h.stream.as_ref().is_some_and(|s| !s.ready(offset + u64::from(size))) {
            return None;
        }
        Some(read_at(&h, offset, size))
    }

    /// A read that may wait for its bytes to come in (see [`Venus::read_now`]).
    pub async fn read_when_in(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        if let Some(stream) = &h.stream {
            let end = offset + u64::from(size);
            if !stream.ready(end) {
                self.counters.add(counters::STREAM_WAITS, 1);
            }
            stream.until(end).await?;
        }
        read_at(&h, offset, size)
    }

    /// Reads from an open file's container (when the kernel does not pass reads through).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        read_at(&*self.handle(fh)?, offset, size)
    }
}

/// Up to `size` bytes at `offset` of an open file's container.
fn read_at(h: &Handle, offset: u64, size: u32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut done = 0;
    while done < buf.len() {
        let n = h.file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}
