//! Fuzz target `stream_decode`: the property is `walcast::fuzzing::stream_decode` (src/fuzzing/targets.rs),
//! which `cargo test` also replays on the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walcast::fuzzing::stream_decode(data));
