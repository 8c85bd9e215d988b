//! Fuzz target `kafka_envelope`: the property is `walcast::fuzzing::kafka_envelope` (src/fuzzing/targets.rs),
//! which `cargo test` also replays on the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walcast::fuzzing::kafka_envelope(data));
