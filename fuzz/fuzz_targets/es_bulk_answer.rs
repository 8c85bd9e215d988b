//! Fuzz target `es_bulk_answer`: the property is `walcast::fuzzing::es_bulk_answer` (src/fuzzing/targets.rs),
//! which `cargo test` also replays on the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walcast::fuzzing::es_bulk_answer(data));
