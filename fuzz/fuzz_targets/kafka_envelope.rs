//! A sequence of pgoutput messages (framed, see `walcast_fuzz::frames`) decoded as the stream
//! does, every change rendered as the Kafka sink renders it: the record key and the Debezium
//! envelope, for the change as streamed and split into delete + create (a key change), with and
//! without a transaction block. Each is JSON serde_json reads, or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast::sink::kafka::envelope::{split_key_change, write_key, write_value, Event, SourceStatic, TxBlock};
use walcast_fuzz::{check_json, frames};

fuzz_target!(|data: &[u8]| {
    let source = SourceStatic { version: "0.1.0".into(), name: "fuzz\"server".into(), db: "db".into() };
    for change in walcast::fuzzing::decode_stream(frames(data)) {
        let rel = &change.relation;
        let key_cols: Vec<usize> = rel.key_columns().collect();
        let (delete, create) = split_key_change(&change);
        for event in [Event::streamed(&change), delete, create] {
            for tx in [None, Some(TxBlock { id: "7:42", total_order: 1, data_collection_order: u64::MAX })] {
                let mut out = Vec::new();
                if write_value(&mut out, &event, &source, i64::MIN, tx).is_ok() {
                    assert!(check_json("an envelope", &out, true).is_none_or(|v| v.is_object()));
                }
            }
            for tuple in [event.before, event.after] {
                let mut out = Vec::new();
                if let Ok(true) = write_key(&mut out, rel, tuple, &key_cols) {
                    assert!(check_json("a record key", &out, true).is_none_or(|v| v.is_object()));
                }
            }
        }
    }
});
