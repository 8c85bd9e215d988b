//! One pgoutput message: `decode::parse` returns a message or a `DecodeError`, never panics, and
//! reads no further than the payload.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walcast::decode::{parse, Datum, Message};

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    let Ok(message) = parse(&payload) else { return };
    // Every value slice lies inside the payload: the decoder is zero-copy.
    let inside = |d: &Datum| match d {
        Datum::Text(b) | Datum::Binary(b) => b.len() <= data.len(),
        Datum::Null | Datum::Unchanged => true,
    };
    match &message {
        Message::Insert { new, .. } => assert!(new.iter().all(inside)),
        Message::Update { old, new, .. } => {
            assert!(new.iter().all(inside));
            assert!(old.iter().flat_map(|o| &o.values).all(inside));
        }
        Message::Delete { old, .. } => assert!(old.values.iter().all(inside)),
        _ => {}
    }
});
