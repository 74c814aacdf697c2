//! Fuzzing every decoder of network input, for a fixed number of cases per decoder (so it runs
//! in CI in bounded time; raise `PROTO_FUZZ_CASES` for a longer hunt).
//!
//! Two kinds of input: arbitrary bytes, and well-formed messages of every shape (`samples`)
//! with bytes flipped, inserted, removed or cut, which reach much deeper into the decoders.
//! A decoder must never panic; whatever it accepts must encode and decode back to itself.

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::{decode, read_frame};
use crate::msg::{Call, Push, PushAck, Response};
use crate::samples;

fn cases() -> u32 {
    std::env::var("PROTO_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

/// Decoding must not panic, and an accepted message must survive a round trip.
fn check<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(msg) = decode::<T>(bytes) {
        let again = postcard::to_stdvec(&msg).expect("re-encode");
        let back: T = decode(&again).expect("re-decode");
        assert_eq!(back, msg);
    }
}

fn all_decoders(bytes: &[u8]) {
    check::<Call>(bytes);
    check::<Response>(bytes);
    check::<Push>(bytes);
    check::<PushAck>(bytes);
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Cut(usize),
    Max(usize),
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if bytes.is_empty() {
            break;
        }
        let at = |i: usize| i % bytes.len();
        match *e {
            Edit::Flip(i, x) => {
                let i = at(i);
                bytes[i] ^= x.max(1);
            }
            Edit::Insert(i, x) => {
                let i = at(i);
                bytes.insert(i, x);
            }
            Edit::Remove(i) => {
                let i = at(i);
                bytes.remove(i);
            }
            Edit::Cut(i) => {
                let i = at(i);
                bytes.truncate(i);
            }
            // A varint that claims a huge length or number.
            Edit::Max(i) => {
                let i = at(i);
                bytes.splice(i..i, [0xff, 0xff, 0xff, 0xff, 0x0f]);
            }
        }
    }
    bytes
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Edit::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Edit::Insert(i, x)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Cut),
        any::<usize>().prop_map(Edit::Max),
    ]
}

fn corpus() -> Vec<Vec<u8>> {
    let enc = |v: &dyn erased::Encode| v.bytes();
    let mut out: Vec<Vec<u8>> = Vec::new();
    out.extend(samples::calls().iter().map(|c| enc(c)));
    out.extend(samples::responses().iter().map(|r| enc(r)));
    out.extend(samples::pushes().iter().map(|p| enc(p)));
    out
}

mod erased {
    pub trait Encode {
        fn bytes(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn bytes(&self) -> Vec<u8> {
            postcard::to_stdvec(self).expect("samples encode")
        }
    }
}

#[test]
fn every_sample_round_trips() {
    for c in samples::calls() {
        assert_eq!(decode::<Call>(&postcard::to_stdvec(&c).unwrap()).unwrap(), c);
    }
    for r in samples::responses() {
        assert_eq!(decode::<Response>(&postcard::to_stdvec(&r).unwrap()).unwrap(), r);
    }
    for p in samples::pushes() {
        assert_eq!(decode::<Push>(&postcard::to_stdvec(&p).unwrap()).unwrap(), p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        all_decoders(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic_a_decoder(
        pick in any::<usize>(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let corpus = corpus();
        let bytes = apply(corpus[pick % corpus.len()].clone(), &edits);
        all_decoders(&bytes);
    }

    #[test]
    fn framed_streams_never_panic_the_reader(
        pick in any::<usize>(),
        edits in proptest::collection::vec(edit(), 0..4),
    ) {
        let corpus = corpus();
        let body = &corpus[pick % corpus.len()];
        let mut framed = (body.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(body);
        let raw = apply(framed, &edits);
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let mut r = raw.as_slice();
            let _ = read_frame::<_, Call>(&mut r).await;
            let mut r = raw.as_slice();
            let _ = read_frame::<_, Response>(&mut r).await;
        });
    }
}
