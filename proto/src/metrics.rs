//! The `/metrics` endpoint of the programs (`vice serve --metrics`, `venus mount --metrics`):
//! OpenMetrics text over the least HTTP/1.1 a Prometheus scraper needs, on a tokio TCP listener.
//! Behind the `metrics` feature, which only crates with programs enable.
//!
//! No HTTP stack: a scrape is one `GET /metrics`, answered and closed. Everything that reaches
//! the listener is untrusted: the request head is capped ([`Limits::max_request`]) and must
//! arrive within [`Limits::read_timeout`], at most [`Limits::max_connections`] are served at
//! once (more are closed unanswered), and whatever arrives is answered with a status (`400`,
//! `404`, `405`, `408`, `431`) or a closed connection, never a panic. The caller says what to
//! serve: `render` is run once per scrape and returns the text, which [`encode`] produces from
//! `prometheus-client` registries (ending in the `# EOF` OpenMetrics requires).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a scrape answer is (the OpenMetrics text format).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bounds on what one scraper may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of request line and headers; a longer head is answered `431`.
    pub max_request: usize,
    /// How long the request head may take to arrive, and the answer to be taken.
    pub read_timeout: Duration,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_request: 8 * 1024, read_timeout: Duration::from_secs(5), max_connections: 16 }
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (a query string is ignored).
    Metrics,
    /// Anything else, answered with this status and no metrics.
    Status(u16),
}

/// Routes a complete request head (request line and headers, without the body).
pub fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else { return Route::Status(400) };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Status(400);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Route::Status(400);
    }
    if method != "GET" {
        return Route::Status(405);
    }
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        _ => Route::Status(404),
    }
}

/// A gauge's value for a count: gauges are `i64`, so a count past that range saturates.
pub fn level(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A gauge set to `v`, for metrics read at scrape time.
pub fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(level(v));
    g
}

/// A counter at `v`, for totals kept elsewhere and read at scrape time.
pub fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// Encodes registries, one after the other, as one OpenMetrics exposition ending in `# EOF`.
/// Their metric names must not overlap.
pub fn encode(registries: &[&Registry]) -> String {
    let mut out = String::new();
    for r in registries {
        // Writing into a String does not fail; a metric that cannot be encoded is left out.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, r);
    }
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

/// Serves `GET /metrics` on `listener` with what `render` returns, until `shutdown` completes.
pub async fn serve<F, Fut>(listener: TcpListener, limits: Limits, render: F, shutdown: impl Future<Output = ()>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let render = Arc::new(render);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("metrics endpoint: too many scrapers; closing one");
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            answer(stream, limits, move || render()).await;
        });
    }
}

/// Answers one connection: reads its head, then writes one response and closes.
async fn answer<Fut: Future<Output = String>>(mut stream: TcpStream, limits: Limits, render: impl FnOnce() -> Fut) {
    let route = match tokio::time::timeout(limits.read_timeout, read_head(&mut stream, limits.max_request)).await {
        Ok(Ok(Some(head))) => route(&head),
        Ok(Ok(None)) => Route::Status(431),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics endpoint: request not read");
            return;
        }
        Err(_) => Route::Status(408),
    };
    let response = match route {
        Route::Metrics => response(200, CONTENT_TYPE, &render().await),
        Route::Status(code) => response(code, "text/plain; charset=utf-8", &format!("{}\n", reason(code))),
    };
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    if let Err(e) =
        tokio::time::timeout(limits.read_timeout, write).await.unwrap_or(Err(std::io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(error = %e, "metrics endpoint: answer not delivered");
    }
}

/// Reads up to the blank line that ends a request head: `None` if none comes within `max`
/// bytes. A peer that closes early sent a truncated head: routed as it is (a bad request).
async fn read_head(stream: &mut TcpStream, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Some(head));
        }
        let scan_from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head[scan_from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(scan_from + end);
            return Ok(Some(head));
        }
        if head.len() > max {
            return Ok(None);
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

fn response(code: u16, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_of_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1"), Route::Status(404));
        assert_eq!(route(b"GET /metricsX HTTP/1.1"), Route::Status(404));
        assert_eq!(route(b"POST /metrics HTTP/1.1"), Route::Status(405));
        for bad in
            [&b""[..], b"GET", b"GET /metrics", b"GET /metrics HTTP/2 extra", b"GET metrics HTTP/1.1", b"\xff\xfe"]
        {
            assert_eq!(route(bad), Route::Status(400), "{bad:?}");
        }
        assert_eq!(route(b"GET /metrics SMTP"), Route::Status(400));
    }

    #[test]
    fn any_bytes_route_without_panicking() {
        let mut seed = 7u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            let _ = route(&bytes);
        }
    }

    #[test]
    fn encoding_ends_in_eof() {
        let mut r = Registry::default();
        r.register("things", "Things seen", counter(3));
        let text = encode(&[&r, &Registry::default()]);
        assert!(text.contains("# TYPE things counter\n"), "{text}");
        assert!(text.contains("things_total 3\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// Sends `request` to a fresh endpoint and returns what came back (empty if it closed).
    async fn exchange(limits: Limits, request: Vec<u8>, then_wait: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            limits,
            || async { "x_total 1\n# EOF\n".to_string() },
            std::future::pending(),
        ));
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before all of an oversized request is written.
        let _ = s.write_all(&request).await;
        if !then_wait {
            let _ = s.shutdown().await;
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        // The endpoint is still there for the next scraper.
        let mut again = TcpStream::connect(addr).await.unwrap();
        again.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut ok = String::new();
        again.read_to_string(&mut ok).await.unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        server.abort();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_scrape_gets_the_text_with_its_content_type() {
        let got = exchange(Limits::default(), b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), true).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")), "{got}");
        assert!(got.contains("Content-Length: 16\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nx_total 1\n# EOF\n"), "{got}");
    }

    #[tokio::test]
    async fn bad_requests_get_a_status_and_the_endpoint_stays() {
        let limits = Limits { max_request: 1024, ..Limits::default() };
        let got = exchange(limits, b"GET /other HTTP/1.1\r\n\r\n".to_vec(), true).await;
        assert!(got.starts_with("HTTP/1.1 404 "), "{got}");
        let got = exchange(limits, b"\x00\x01\x02 garbage\r\n\r\n".to_vec(), true).await;
        assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
        let got = exchange(limits, b"GET /metr".to_vec(), false).await;
        assert!(got.starts_with("HTTP/1.1 400 "), "a truncated request: {got}");
        let got = exchange(limits, vec![b'a'; 64 * 1024], true).await;
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 431 "), "{got}");
    }

    #[tokio::test]
    async fn a_silent_client_is_answered_408_once_the_read_timeout_passes() {
        let limits = Limits { read_timeout: Duration::from_millis(50), ..Limits::default() };
        let got = exchange(limits, b"GET /metrics HTTP/1.1\r\n".to_vec(), true).await;
        assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    }

    #[tokio::test]
    async fn scrapers_past_the_limit_are_closed_and_the_rest_served() {
        let limits = Limits { max_connections: 1, ..Limits::default() };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, limits, || async { "# EOF\n".to_string() }, std::future::pending()));
        let mut holder = TcpStream::connect(addr).await.unwrap();
        holder.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let _ = second.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = second.read_to_end(&mut out).await;
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        holder.write_all(b"\r\n").await.unwrap();
        let mut ok = String::new();
        holder.read_to_string(&mut ok).await.unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        server.abort();
    }
}
