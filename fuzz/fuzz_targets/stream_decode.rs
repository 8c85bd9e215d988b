//! A sequence of pgoutput messages (framed, see `walcast_fuzz::frames`) through the relation
//! cache as the stream decodes them; every change renders to a JSON line serde_json reads, or
//! to a typed error (a value invalid for its type, a tuple of another width than its relation).
//! Numbers past a double's range are let through (json/jsonb values may hold them; floats are
//! checked strictly by `value_json`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast::decode::{Change, Op};
use walcast_fuzz::{check_json, frames};

fuzz_target!(|data: &[u8]| {
    for change in walcast::fuzzing::decode_stream(frames(data)) {
        let mut line = b"prefix".to_vec();
        if change.write_json(&mut line).is_ok() {
            check_json("a change line", &line[6..], true);
        }
        // The same row as a snapshot read: its change_id is built from the key.
        let read = Change { op: Op::Read, ..change.clone() };
        let mut id = Vec::new();
        if walcast::fuzzing::change_id(&read, &mut id).is_ok() {
            assert!(check_json("a change_id", &id, true).is_none_or(|v| v.is_string()));
        }
        let mut line = Vec::new();
        if read.write_json(&mut line).is_ok() {
            check_json("a read line", &line, true);
        }
    }
});
