//! Hostile input against a live server: a corpus of malformed frames (cut short, oversized,
//! bytes flipped, wrong variants, trailing garbage, idle streams) is replayed while another
//! client keeps working, and the server answers every bad frame with an error and keeps serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use e2e::*;
use proto::msg::{Request, Response};

type R = anyhow::Result<()>;

/// Frames derived from well-formed calls of every kind.
fn corpus() -> Vec<Vec<u8>> {
    let frame = |body: &[u8]| {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    let mut out = Vec::new();
    for (i, call) in proto::samples::calls().iter().enumerate() {
        let body = postcard::to_stdvec(call).expect("encode");
        // Cut short at several points (the stream then ends): the server sees early EOF.
        for cut in [0, 1, body.len() / 3, body.len() / 2, body.len().saturating_sub(1)] {
            let mut f = frame(&body);
            f.truncate(4 + cut);
            out.push(f);
        }
        // A length that is a lie in both directions.
        let mut longer = frame(&body);
        longer[..4].copy_from_slice(&(body.len() as u32 + 100).to_le_bytes());
        out.push(longer);
        let mut shorter = frame(&body);
        shorter[..4].copy_from_slice(&(body.len() as u32 / 2).to_le_bytes());
        out.push(shorter);
        // Trailing garbage inside the frame.
        let mut trailing = body.clone();
        trailing.extend_from_slice(b"junk");
        out.push(frame(&trailing));
        // An unknown request variant, and bytes flipped deterministically.
        // An unknown request variant (after the token's option byte), or an invalid option.
        let mut wrong = body.clone();
        if call.token.is_none() {
            wrong[1] = 0x7f;
        } else {
            wrong[0] = 0x02;
        }
        out.push(frame(&wrong));
        for k in 0..4 {
            let mut flipped = body.clone();
            let at = (i * 31 + k * 17) % flipped.len();
            flipped[at] ^= 0x5a;
            out.push(frame(&flipped));
        }
    }
    // Oversized and empty frames.
    out.push(u32::MAX.to_le_bytes().to_vec());
    out.push((proto::frame::MAX_FRAME + 1).to_le_bytes().to_vec());
    out.push(0u32.to_le_bytes().to_vec());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_malformed_frames_is_refused_while_others_keep_working() -> R {
    let vice = Vice::start("hostile.test")?;
    let pid = vice.pid().expect("vice runs");

    // An honest client keeps storing and reading all along.
    let honest = TestClient::admin(&vice).await?;
    let root = honest.root_of("root.cell").await?;
    let file = honest.create(root, "honest").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (rounds, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let worker = {
        let (stop, rounds, failures) = (stop.clone(), rounds.clone(), failures.clone());
        tokio::spawn(async move {
            let mut attr = file;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let data = format!("round {n}").into_bytes();
                match honest.store(&attr, &data).await {
                    Ok(a) => attr = a,
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                match honest.fetch(attr.fid).await {
                    Ok((_, got)) if got == data => rounds.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };

    // The attacker: a connection that said hello, then raw streams.
    let attacker = TestClient::connect(&vice.cell_file()).await?;
    let conn = attacker.session.connection().clone();
    let corpus = corpus();
    let mut answered = 0;
    for frame in &corpus {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(frame).await?;
        let _ = send.finish();
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::io::AsyncReadExt::read_to_end(&mut recv, &mut reply).await
        })
        .await;
        assert!(read.is_ok(), "the server did not answer a malformed frame within 20 s");
        if reply.len() >= 4 {
            // Whatever it answers is a well-formed frame (usually an error).
            let body = &reply[4..];
            let decoded = proto::frame::decode::<Response>(body);
            assert!(decoded.is_ok() || body.is_empty(), "malformed reply {reply:?}");
            answered += 1;
        }
    }
    assert!(answered * 10 >= corpus.len() * 9, "only {answered} of {} frames got a reply", corpus.len());

    // Idle streams (opened, nothing sent) and a flood of streams do not starve anyone.
    let mut idle = Vec::new();
    for _ in 0..64 {
        if let Ok(Ok((mut send, recv))) = tokio::time::timeout(Duration::from_millis(200), conn.open_bi()).await {
            let _ = send.write_all(&[1, 0]).await; // half a length prefix, then silence
            idle.push((send, recv));
        }
    }
    let others = TestClient::admin(&vice).await?;
    others.status(root).await?;

    stop.store(true, Ordering::Relaxed);
    worker.await?;
    assert_eq!(failures.load(Ordering::Relaxed), 0, "the honest client saw errors");
    assert!(rounds.load(Ordering::Relaxed) > 0, "the honest client made no progress");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "vice died");
    // An attacker holding every stream it may open only waits on itself; once it lets them go,
    // its connection is served again.
    drop(idle);
    let r = attacker.session.call(&Request::ListServers).await?;
    assert!(matches!(r, Response::Servers { .. }), "{r:?}");
    Ok(())
}
