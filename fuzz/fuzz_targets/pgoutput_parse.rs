//! Fuzz target `pgoutput_parse`: the property is `walcast::fuzzing::pgoutput_parse` (src/fuzzing/targets.rs),
//! which `cargo test` also replays on the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walcast::fuzzing::pgoutput_parse(data));
