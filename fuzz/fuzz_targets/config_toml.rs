//! Config text: `Config::parse` (TOML, then `validate`) returns a config or a `ConfigError`,
//! never panics; a valid config answers its dead-letter destinations.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use walcast::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            std::hint::black_box(config.dead_letter_destinations());
        }
        Err(e) => {
            std::hint::black_box(e.to_string());
        }
    }
});
