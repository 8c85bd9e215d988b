//! Fuzz target `config_toml`: the property is `walcast::fuzzing::config_toml` (src/fuzzing/targets.rs),
//! which `cargo test` also replays on the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walcast::fuzzing::config_toml(data));
