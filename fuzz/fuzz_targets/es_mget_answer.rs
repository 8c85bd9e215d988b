//! Fuzz target `es_mget_answer`: the property is `walcast::fuzzing::es_mget_answer` (src/fuzzing/targets.rs),
//! which `cargo test` also replays on the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walcast::fuzzing::es_mget_answer(data));
