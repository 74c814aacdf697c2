//! A client's view of one vice server: connect with a pinned certificate, make RPCs, stream file
//! data, and receive callback breaks on streams the server opens.
//!
//! One bidirectional QUIC stream per RPC: the request frame, then (for `PutChunks`) the chunk
//! bytes; the response frame, then (for `FetchData`) the file's bytes. Many RPCs may be in flight
//! on one connection at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::attr::Attr;
use crate::auth::{Access, Token};
use crate::cell::CellServer;
use crate::chunk::{ChunkHash, ChunkRef, MAX_CHUNK};
use crate::error::ProtoError;
use crate::frame::{read_frame, write_frame};
use crate::ids::{ClientId, Fid, ServerId, VolumeId};
use crate::msg::{PROTOCOL_VERSION, Promise, Push, PushAck, Request, Response};
use crate::tls::{Identity, SERVER_NAME, TransportTuning, client_config};

/// Makes connections to the servers of a cell from one local UDP socket.
pub struct Connector {
    endpoint: quinn::Endpoint,
    identity: Option<Identity>,
    tuning: TransportTuning,
}

impl Connector {
    /// `identity` is presented to servers (the admin credential for `vos`); `None` connects
    /// anonymously.
    pub fn new(identity: Option<Identity>, tuning: TransportTuning) -> Result<Self, ProtoError> {
        let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            crate::udp::bind(bind)?,
            std::sync::Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Connector { endpoint, identity, tuning })
    }

    /// Connects and says hello. Fails with `FingerprintMismatch` if the server is not the one the
    /// cell file pins.
    pub async fn connect(
        &self,
        server: &CellServer,
        client: ClientId,
        timeout: Duration,
    ) -> Result<Session, ProtoError> {
        let addr: SocketAddr = server
            .address
            .parse()
            .map_err(|_| ProtoError::Connect { address: server.address.clone(), reason: "not IP:PORT".into() })?;
        let (config, mismatch) = client_config(&server.fingerprint, self.identity.as_ref(), &self.tuning)?;
        let connecting = self
            .endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|e| ProtoError::Connect { address: server.address.clone(), reason: e.to_string() })?;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => return Err(ProtoError::Timeout(timeout)),
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let seen = mismatch.lock().ok().and_then(|m| m.clone());
                return Err(match seen {
                    Some(got) => ProtoError::FingerprintMismatch {
                        address: server.address.clone(),
                        expected: server.fingerprint.clone(),
                        got,
                    },
                    None => ProtoError::Connect { address: server.address.clone(), reason: e.to_string() },
                });
            }
        };
        let session = Session { conn, server: server.server_id(), patience: patience(timeout) };
        let hello = Request::Hello { client, protocol: PROTOCOL_VERSION, host: hostname() };
        match session.call(&hello).await? {
            Response::Hello { .. } => Ok(session),
            other => Err(unexpected("Hello", other)),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn unexpected(request: &'static str, got: Response) -> ProtoError {
    match got {
        Response::Error(e) => ProtoError::Remote(e),
        other => ProtoError::Unexpected { request, got: format!("{other:?}").chars().take(200).collect() },
    }
}

/// How long a request may make no progress while its server is alive (the connection's
/// keep-alives are answered) before it counts as failed: a server stuck on it. Generous, since
/// a live server on a slow link is not a dead one; a dead one is found by the connection's
/// idle timeout, in `timeout`.
fn patience(timeout: Duration) -> Duration {
    (timeout * 12).max(Duration::from_secs(60))
}

/// How often a waiting request looks at its connection's progress.
const PROGRESS_CHECK: Duration = Duration::from_millis(250);
/// Bytes that must move on the connection (either way) for a wait to count as progress: more
/// than the keep-alives of a quiet connection, less than any real transfer.
const PROGRESS_BYTES: u64 = 2048;

/// A live connection to one server.
#[derive(Clone)]
pub struct Session {
    conn: quinn::Connection,
    server: ServerId,
    patience: Duration,
}

impl Session {
    pub fn server(&self) -> ServerId {
        self.server
    }

    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Whether the connection has been closed or lost.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }

    /// Runs one request as long as it gets anywhere. A server that stops answering at all is
    /// found by the connection (its idle timeout: no packet, not even a keep-alive's ack,
    /// within the caller's timeout), which fails the request at once; a live server is waited
    /// for however slow the link, as long as bytes keep moving on the connection, and for
    /// `patience` once they stop (the server thinking, or stuck). A request's total time is no
    /// measure: a 16 MiB store over a lossy link takes what it takes.
    async fn timed<T>(&self, fut: impl Future<Output = Result<T, ProtoError>>) -> Result<T, ProtoError> {
        let mut fut = std::pin::pin!(fut);
        // Most requests are over before the first look.
        if let Ok(r) = tokio::time::timeout(PROGRESS_CHECK, &mut fut).await {
            return r;
        }
        let mut seen = self.bytes_moved();
        let mut moved_at = tokio::time::Instant::now();
        let mut check = tokio::time::interval(PROGRESS_CHECK);
        loop {
            tokio::select! {
                r = &mut fut => return r,
                _ = check.tick() => {
                    let now = self.bytes_moved();
                    if now >= seen + PROGRESS_BYTES {
                        seen = now;
                        moved_at = tokio::time::Instant::now();
                    } else if moved_at.elapsed() >= self.patience {
                        return Err(ProtoError::Timeout(self.patience));
                    }
                }
            }
        }
    }

    /// Bytes sent and received on the connection so far.
    fn bytes_moved(&self) -> u64 {
        let stats = self.conn.stats();
        stats.udp_tx.bytes + stats.udp_rx.bytes
    }

    /// One anonymous request, one response. Errors the server reports come back as
    /// `Ok(Response::Error)`; use [`Session::call_ok`] to turn them into `Err`.
    pub async fn call(&self, req: &Request) -> Result<Response, ProtoError> {
        self.call_as(None, req).await
    }

    /// One request made as the holder of `token`.
    pub async fn call_as(&self, token: Option<&Token>, req: &Request) -> Result<Response, ProtoError> {
        self.timed(async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            write_call(&mut send, token, req).await?;
            let _ = send.finish();
            read_frame(&mut recv).await
        })
        .await
    }

    pub async fn call_ok(&self, req: &Request) -> Result<Response, ProtoError> {
        match self.call(req).await? {
            Response::Error(e) => Err(ProtoError::Remote(e)),
            other => Ok(other),
        }
    }

    /// Fetches a whole file. `sink` receives every chunk, in order, after its hash was verified;
    /// only one chunk is in memory at a time.
    pub async fn fetch_data(
        &self,
        token: Option<&Token>,
        fid: Fid,
        mut sink: impl FnMut(&ChunkRef, &[u8]) -> std::io::Result<()>,
    ) -> Result<FetchedData, ProtoError> {
        self.timed(async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            write_call(&mut send, token, &Request::FetchData { fid }).await?;
            let _ = send.finish();
            let (attr, chunks, promise, access) = match read_frame(&mut recv).await? {
                Response::Data { attr, chunks, promise, access } => (attr, chunks, promise, access),
                other => return Err(unexpected("FetchData", other)),
            };
            let mut buf = Vec::with_capacity(MAX_CHUNK as usize);
            for (index, chunk) in chunks.iter().enumerate() {
                if chunk.len > MAX_CHUNK {
                    return Err(ProtoError::Malformed(format!("chunk {index} is {} bytes", chunk.len)));
                }
                buf.resize(chunk.len as usize, 0);
                AsyncReadExt::read_exact(&mut recv, &mut buf).await?;
                if ChunkHash::of(&buf) != chunk.hash {
                    return Err(ProtoError::HashMismatch { index });
                }
                sink(chunk, &buf).map_err(ProtoError::Local)?;
            }
            Ok(FetchedData { attr, chunks, promise, access })
        })
        .await
    }

    /// A request followed by `body` as raw bytes (a consensus message between servers, which
    /// may be larger than a frame).
    pub async fn call_with_body(&self, req: &Request, body: Vec<u8>) -> Result<Response, ProtoError> {
        self.timed(async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            write_call(&mut send, None, req).await?;
            send.write_chunk(bytes::Bytes::from(body)).await.map_err(std::io::Error::from)?;
            let _ = send.finish();
            read_frame(&mut recv).await
        })
        .await
    }

    /// The bytes of `chunks`, each verified against its hash (server to server).
    pub async fn read_chunks(&self, chunks: &[ChunkRef]) -> Result<Vec<Vec<u8>>, ProtoError> {
        self.timed(async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            write_call(&mut send, None, &Request::ReadChunks { chunks: chunks.to_vec() }).await?;
            let _ = send.finish();
            match read_frame(&mut recv).await? {
                Response::ChunksFollow => {}
                other => return Err(unexpected("ReadChunks", other)),
            }
            let mut out = Vec::with_capacity(chunks.len());
            for (index, chunk) in chunks.iter().enumerate() {
                if chunk.len > MAX_CHUNK {
                    return Err(ProtoError::Malformed(format!("chunk {index} is {} bytes", chunk.len)));
                }
                let mut buf = vec![0u8; chunk.len as usize];
                AsyncReadExt::read_exact(&mut recv, &mut buf).await?;
                if ChunkHash::of(&buf) != chunk.hash {
                    return Err(ProtoError::HashMismatch { index });
                }
                out.push(buf);
            }
            Ok(out)
        })
        .await
    }

    /// Which of `hashes` the server lacks, by index.
    pub async fn missing_chunks(
        &self,
        token: Option<&Token>,
        volume: VolumeId,
        hashes: Vec<ChunkHash>,
    ) -> Result<Vec<u32>, ProtoError> {
        match self.call_as(token, &Request::MissingChunks { volume, hashes }).await? {
            Response::Missing { indices } => Ok(indices),
            other => Err(unexpected("MissingChunks", other)),
        }
    }

    /// Uploads chunks. `read_chunk(i)` returns the bytes of `chunks[i]`; they are read one at a
    /// time as the stream drains, so a large upload never sits in memory.
    pub async fn put_chunks(
        &self,
        token: Option<&Token>,
        volume: VolumeId,
        chunks: Vec<ChunkRef>,
        read_chunk: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
    ) -> Result<u32, ProtoError> {
        match self.send_chunks(token, Request::PutChunks { volume, chunks }, read_chunk).await? {
            Response::ChunksStored { stored } => Ok(stored),
            other => Err(unexpected("PutChunks", other)),
        }
    }

    /// Sends `req` (`PutChunks` or `PutChunksAndMutate`) and then each chunk's bytes; the
    /// server's answer (a refusal as `ProtoError::Remote`).
    pub async fn send_chunks(
        &self,
        token: Option<&Token>,
        req: Request,
        mut read_chunk: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
    ) -> Result<Response, ProtoError> {
        let lens: Vec<u32> = match &req {
            Request::PutChunks { chunks, .. } | Request::PutChunksAndMutate { chunks, .. } => {
                chunks.iter().map(|c| c.len).collect()
            }
            _ => Vec::new(),
        };
        self.timed(async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            write_call(&mut send, token, &req).await?;
            for (i, &len) in lens.iter().enumerate() {
                let data = match read_chunk(i) {
                    Ok(data) if data.len() == len as usize => data,
                    // Reset, not finished (as dropping the stream would): a short upload would
                    // read to the server as a cut connection.
                    Ok(data) => {
                        let _ = send.reset(quinn::VarInt::from_u32(0));
                        let e = format!("chunk {i} read {} bytes where {len} were declared", data.len());
                        return Err(ProtoError::Local(std::io::Error::other(e)));
                    }
                    Err(e) => {
                        let _ = send.reset(quinn::VarInt::from_u32(0));
                        return Err(ProtoError::Local(e));
                    }
                };
                // Handed over, not copied: quinn sends from the buffer itself.
                let data = bytes::Bytes::from(data);
                if let Err(e) = send.write_chunk(data).await {
                    // The server stopped reading: it refused the upload part-way (space,
                    // rights) and says why on the reply. That is an answer, not a lost server.
                    if matches!(e, quinn::WriteError::Stopped(_)) {
                        return match read_frame(&mut recv).await? {
                            Response::Error(e) => Err(ProtoError::Remote(e)),
                            other => Err(unexpected(req.meta().name, other)),
                        };
                    }
                    return Err(std::io::Error::from(e).into());
                }
            }
            let _ = send.finish();
            match read_frame(&mut recv).await? {
                Response::Error(e) => Err(ProtoError::Remote(e)),
                other => Ok(other),
            }
        })
        .await
    }

    /// A request whose reply is followed by raw bytes until the stream ends (a volume dump):
    /// `sink` gets them as they arrive. Each read must arrive within the timeout.
    pub async fn download(
        &self,
        req: &Request,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<Response, ProtoError> {
        self.timed(async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            write_call(&mut send, None, req).await?;
            let _ = send.finish();
            let response: Response = read_frame(&mut recv).await?;
            if let Response::Error(e) = response {
                return Err(ProtoError::Remote(e));
            }
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = AsyncReadExt::read(&mut recv, &mut buf).await?;
                if n == 0 {
                    return Ok(response);
                }
                sink(&buf[..n]).map_err(ProtoError::Local)?;
            }
        })
        .await
    }

    /// A request followed by raw bytes from `source` (which returns 0 at its end); then the
    /// reply (a server may take a while to answer once it has everything: it checks, then
    /// applies; the wait is bounded as every request's is, see `timed`).
    pub async fn upload(
        &self,
        req: &Request,
        mut source: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    ) -> Result<Response, ProtoError> {
        self.timed(async {
            let (mut send, mut recv) = self.conn.open_bi().await?;
            write_call(&mut send, None, req).await?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = source(&mut buf).map_err(ProtoError::Local)?;
                if n == 0 {
                    break;
                }
                send.write_all(&buf[..n]).await.map_err(std::io::Error::from)?;
            }
            let _ = send.finish();
            match read_frame(&mut recv).await? {
                Response::Error(e) => Err(ProtoError::Remote(e)),
                other => Ok(other),
            }
        })
        .await
    }

    /// Serves callback breaks: every stream the server opens carries one [`Push`]; `handler`
    /// runs before the ack is sent, so the server knows the promise is gone when it hears back.
    /// Ends when the connection closes.
    pub fn spawn_push_handler(&self, handler: Arc<dyn Fn(Push) + Send + Sync>) -> tokio::task::JoinHandle<()> {
        self.spawn_push_handler_async(Arc::new(move |push| {
            handler(push);
            Box::pin(std::future::ready(()))
        }))
    }

    /// As [`Session::spawn_push_handler`], for a handler whose work finishes later: the ack
    /// is sent once the future it returns completes.
    pub fn spawn_push_handler_async(&self, handler: PushHandler) -> tokio::task::JoinHandle<()> {
        let conn = self.conn.clone();
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let handler = handler.clone();
                tokio::spawn(async move {
                    match read_frame::<_, Push>(&mut recv).await {
                        Ok(push) => {
                            handler(push).await;
                            if write_frame(&mut send, &PushAck::Ok).await.is_ok() {
                                let _ = send.finish();
                                // Wait until the ack is delivered before dropping the stream.
                                let _ = send.stopped().await;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "malformed push from server"),
                    }
                });
            }
        })
    }
}

/// Takes in one push; the ack is sent when the returned future completes.
pub type PushHandler = Arc<dyn Fn(Push) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A whole file as `FetchData` delivered it (the bytes went to the sink).
#[derive(Debug, Clone)]
pub struct FetchedData {
    pub attr: Attr,
    pub chunks: Vec<ChunkRef>,
    pub promise: Promise,
    pub access: Access,
}

async fn write_call<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    token: Option<&Token>,
    request: &Request,
) -> Result<(), ProtoError> {
    write_frame(w, &CallRef { token, request }).await
}

/// A [`crate::msg::Call`] built from borrowed parts (a request can be a large batch of records);
/// it encodes to the same bytes.
#[derive(serde::Serialize)]
struct CallRef<'a> {
    token: Option<&'a Token>,
    request: &'a Request,
}

/// Server side: sends one push on a new stream and waits for the ack.
pub async fn send_push(conn: &quinn::Connection, push: &Push, timeout: Duration) -> Result<(), ProtoError> {
    let fut = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, push).await?;
        let _ = send.finish();
        let _ack: PushAck = read_frame(&mut recv).await?;
        Ok(())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ProtoError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{PtsId, TokenBody, TokenKey};
    use crate::msg::Call;

    #[test]
    fn borrowed_call_encodes_like_call() {
        let token = TokenKey::generate().issue(TokenBody {
            cell: "c".into(),
            user: PtsId(3),
            name: "u".into(),
            issued: 1,
            expires: 2,
            groups: vec![],
        });
        let request = Request::ListServers;
        for token in [None, Some(token)] {
            let owned = postcard::to_stdvec(&Call { token: token.clone(), request: request.clone() }).unwrap();
            let borrowed = postcard::to_stdvec(&CallRef { token: token.as_ref(), request: &request }).unwrap();
            assert_eq!(owned, borrowed);
        }
    }
}
