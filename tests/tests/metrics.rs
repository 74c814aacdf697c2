//! The Prometheus endpoints: a real `vice serve --metrics` and a real `venus mount --metrics`,
//! scraped with a plain TCP GET before and after file operations on the mount; bad requests to
//! the endpoints are answered or closed, and neither the server nor the mount minds.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use e2e::*;

type R = anyhow::Result<()>;

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Sends `request` and returns everything that came back (empty if the peer closed or reset).
fn exchange(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    // The endpoint may answer and close before an oversized request is all written.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /metrics`: checks the status line and content type, returns the body.
fn scrape(port: u16) -> String {
    let got = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (head, body) = got.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head in {got:?}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"), "{head}");
    check_openmetrics(body);
    body.to_string()
}

/// A light OpenMetrics check: descriptors, then samples of declared families with numeric
/// values, ending in exactly one `# EOF`.
fn check_openmetrics(text: &str) {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    let mut families: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
            assert!(["counter", "gauge", "histogram", "info", "unknown"].contains(&kind), "{line}");
            families.push(name.to_string());
        } else if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "value of {line:?}");
            let name = series.split('{').next().unwrap_or_default();
            assert!(families.iter().any(|f| name.starts_with(f.as_str())), "{name} has no TYPE line before it");
        }
    }
}

/// The value of one series (`name{labels}` exactly as printed), or 0 if it is absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(s, _)| *s == series)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// The sum over every series of a family whose labels contain `label`.
fn sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(s, _)| s.split('{').next() == Some(name) && s.contains(label))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[test]
fn vice_and_venus_metrics_move_with_file_operations_and_survive_bad_requests() -> R {
    if !fuse_available() {
        return Ok(());
    }
    let (vice_port, venus_port) = (free_tcp_port(), free_tcp_port());
    let vice_addr = format!("127.0.0.1:{vice_port}");
    let venus_addr = format!("127.0.0.1:{venus_port}");
    let vice = Vice::start_with("metrics.test", &["--metrics", &vice_addr])?;
    // Changes sent as they are made (no write-back permit), so each shows as its own request.
    let mount = VenusMount::start_with(&vice, "metrics.test", &["--metrics", &venus_addr, "--write-back-window", "0"])?;

    let (v0, c0) = (scrape(vice_port), scrape(venus_port));
    let hello = value(&v0, "vice_requests_total{request=\"Hello\"}");
    assert!(hello >= 1.0, "venus said Hello:\n{v0}");
    assert!(value(&v0, "vice_connections") >= 1.0, "{v0}");
    assert!(value(&v0, "vice_clients") >= 1.0, "{v0}");
    assert!(v0.contains("vice_volume_used_bytes{volume=\"root.cell\""), "{v0}");

    // Create and store a file, read it back after dropping it from the cache, list a directory.
    let data = Noise::bytes(21, 200_000);
    fs::write(mount.path("hello.bin"), &data)?;
    mount.venus_ok(&["flush", &mount.path("hello.bin").display().to_string()]);
    assert_eq!(fs::read(mount.path("hello.bin"))?, data);
    fs::create_dir(mount.path("dir"))?;
    fs::write(mount.path("dir/small.txt"), b"small")?;

    let (v1, c1) = (scrape(vice_port), scrape(venus_port));
    let create = "vice_requests_total{request=\"Create\"}";
    assert!(value(&v1, create) >= value(&v0, create) + 2.0, "two Creates:\n{v1}");
    let stores = |t: &str| {
        value(t, "vice_requests_total{request=\"Store\"}")
            + value(t, "vice_requests_total{request=\"PutChunksAndMutate\"}")
    };
    assert!(stores(&v1) > stores(&v0), "a store reached the server:\n{v1}");
    assert!(value(&v1, "vice_request_duration_seconds_count{request=\"Create\"}") >= 2.0, "{v1}");
    assert!(value(&v1, "vice_received_bytes_total") >= value(&v0, "vice_received_bytes_total") + 200_000.0, "{v1}");
    assert!(value(&v1, "vice_sent_bytes_total") > value(&v0, "vice_sent_bytes_total"), "{v1}");
    let used = sum(&v1, "vice_volume_used_bytes", "volume=\"root.cell\"");
    assert!(used >= 200_005.0, "root.cell holds both files: {used}\n{v1}");
    // The chunk totals are a table scan, cached for a minute: present, not necessarily current.
    assert!(v1.contains("\nvice_chunk_store_bytes "), "{v1}");
    assert!(v1.contains("\nvice_chunks "), "{v1}");

    let fetch = "venus_rpcs_total{request=\"FetchData\"}";
    assert!(value(&c1, fetch) > value(&c0, fetch), "the flushed file was fetched again:\n{c1}");
    assert!(value(&c1, "venus_bytes_stored_total") >= value(&c0, "venus_bytes_stored_total") + 200_000.0, "{c1}");
    assert!(value(&c1, "venus_bytes_fetched_total") >= 200_000.0, "{c1}");
    assert!(value(&c1, "venus_cache_used_bytes") > 0.0, "{c1}");
    assert!(value(&c1, "venus_cache_limit_bytes") > 0.0, "{c1}");
    assert!(sum(&c1, "venus_server_connected", "cell=\"metrics.test\"") >= 1.0, "{c1}");
    assert!(sum(&c1, "venus_volume_state", "state=\"connected\"") >= 1.0, "{c1}");

    // Bad requests: a status or a closed connection, on both endpoints.
    for port in [vice_port, venus_port] {
        let got = exchange(port, b"GET /nothing HTTP/1.1\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 404 "), "{got}");
        let got = exchange(port, b"\x16\x03\x01\x00garbage\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
        let got = exchange(port, b"DELETE /metrics HTTP/1.1\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 405 "), "{got}");
        let got = exchange(port, &vec![b'A'; 1 << 20]);
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 431 "), "{got}");
        // A scraper that connects and goes away without a word.
        drop(TcpStream::connect(("127.0.0.1", port))?);
    }

    // Both still serve, and the mount still works.
    fs::write(mount.path("after.txt"), b"still here")?;
    assert_eq!(fs::read(mount.path("after.txt"))?, b"still here");
    let v2 = scrape(vice_port);
    assert!(value(&v2, create) > value(&v1, create), "{v2}");
    scrape(venus_port);

    // `venus status --prometheus` prints the same families, from the control socket.
    let text = mount.venus_ok(&["status", "--prometheus"]);
    check_openmetrics(&text);
    assert!(value(&text, fetch) >= value(&c1, fetch), "{text}");
    assert!(text.contains("# TYPE venus_bytes_stored counter"), "{text}");
    Ok(())
}
