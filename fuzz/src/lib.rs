//! What the fuzz targets share: the framing of a message sequence and the JSON check.

use bytes::Bytes;

/// Split a fuzz input into pgoutput payloads: each is a 2-byte big-endian length and that many
/// bytes (the last one takes what is left when its length runs past the end). The seed corpus
/// is written in this framing (`fuzz/seeds.py`).
pub fn frames(data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let take = len.min(rest.len());
        out.push(Bytes::copy_from_slice(&rest[..take]));
        rest = &rest[take..];
    }
    out
}

/// Panic unless `bytes` is one JSON value that serde_json reads (what a consumer of walcast's
/// output does with it). With `big_numbers`, a number past a double's range is let through
/// (`None`) when the rest is valid: json/jsonb values may hold one (`1e400` is valid in
/// Postgres) and walcast embeds them as they are.
pub fn check_json(what: &str, bytes: &[u8], big_numbers: bool) -> Option<serde_json::Value> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Some(v),
        Err(e) if big_numbers && e.to_string().starts_with("number out of range") => {
            // serde's IgnoredAny checks the grammar without converting numbers.
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => None,
                Err(e) => panic!("{what} is not valid JSON ({e}): {}", String::from_utf8_lossy(bytes)),
            }
        }
        Err(e) => panic!("{what} is not valid JSON ({e}): {}", String::from_utf8_lossy(bytes)),
    }
}
