//! Fuzz target `value_json`: the property is `walcast::fuzzing::value_json` (src/fuzzing/targets.rs),
//! which `cargo test` also replays on the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walcast::fuzzing::value_json(data));
