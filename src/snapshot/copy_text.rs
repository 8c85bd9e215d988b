//! Rows of `COPY (SELECT ...) TO STDOUT` in text format, and the literals spliced into that
//! query (COPY takes no parameters). In text format every value is its type's output function's
//! text, as pgoutput streams it; COPY only escapes it: tab between values, newline after the
//! row, `\N` for NULL, and a backslash before `\`, the delimiter and the control characters
//! `\b \f \n \r \t \v` (written as those letters).

use bytes::{Bytes, BytesMut};

use crate::decode::{Slot, Tuple};

/// `0x01` in every byte of a word, and bit 7 of every byte.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bit 7 set in the bytes of `word` equal to `byte`. A borrow can also flag a byte above a true
/// match, never one below: the lowest flagged byte is always a match.
fn equal_bytes(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Where the next byte [`next_row`] stops at lies, from `from` on: the delimiter, the row end,
/// an escape and, while `ascii` (to know whether a row needs UTF-8 validation), any non-ASCII
/// byte. Eight bytes per step (a value is mostly bytes that are none of these).
fn next_stop(bytes: &[u8], from: usize, ascii: bool) -> Option<usize> {
    let high = if ascii { HIGHS } else { 0 };
    let rest = bytes.get(from..)?;
    let mut words = rest.chunks_exact(8);
    let mut at = from;
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let found = equal_bytes(word, b'\t') | equal_bytes(word, b'\n') | equal_bytes(word, b'\\') | (word & high);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = words.remainder();
    tail.iter().position(|&b| matches!(b, b'\t' | b'\n' | b'\\') || (ascii && b >= 0x80)).map(|p| at + p)
}

/// The first row of `data` (received messages: the server sends one row per message) as a
/// tuple and the bytes it took with its newline; `None` when `data` holds no whole row yet.
/// One pass: the tuple's payload is the row itself (no copy) unless a value holds escapes (text
/// with tabs, newlines or backslashes: rare), then the row's values are copied unescaped. `\N`
/// is NULL. The row must be UTF-8 (the client encoding); an error says what is wrong with it.
pub(super) fn next_row(data: &Bytes, columns: usize) -> Result<Option<(Tuple, usize)>, String> {
    let bytes = &data[..];
    let mut slots = Vec::with_capacity(columns);
    let (mut start, mut escaped, mut ascii) = (0usize, false, true);
    let push = |slots: &mut Vec<Slot>, start: usize, end: usize| -> Result<(), String> {
        if slots.len() == columns {
            return Err(format!("a row of COPY has more than {columns} values"));
        }
        slots.push(if &bytes[start..end] == b"\\N" { Slot::Null } else { Slot::Text { start, end } });
        Ok(())
    };
    let mut i = 0;
    while let Some(at) = next_stop(bytes, i, ascii) {
        i = at;
        let Some(&b) = bytes.get(i) else { break };
        match b {
            b'\\' => {
                // The escaped byte is skipped: the second backslash of `\\` starts no escape.
                // COPY escapes a newline in a value as `\n`; a raw one here ends the row.
                if bytes.get(i + 1) == Some(&b'\n') {
                    return Err("a COPY value ends in a lone backslash".into());
                }
                escaped = true;
                i += 2;
                continue;
            }
            b'\t' => {
                push(&mut slots, start, i)?;
                start = i + 1;
            }
            b'\n' => {
                push(&mut slots, start, i)?;
                if slots.len() != columns {
                    return Err(format!("a row of COPY has {} values, expected {columns}", slots.len()));
                }
                // COPY's escapes and delimiters are ASCII: a valid row has valid values.
                if !ascii && std::str::from_utf8(&bytes[..i]).is_err() {
                    return Err("a value is not valid UTF-8".into());
                }
                let row = data.slice(..i);
                let tuple = if escaped { unescaped(&row, slots)? } else { Tuple::from_slots(row, slots) };
                return tuple.map(|t| Some((t, i + 1))).ok_or_else(|| "a value lies outside its row".to_string());
            }
            _ => ascii = false,
        }
        i += 1;
    }
    Ok(None)
}

/// The tuple of a row holding escapes: its values unescaped into a payload of their own.
fn unescaped(row: &[u8], slots: Vec<Slot>) -> Result<Option<Tuple>, String> {
    let mut payload = BytesMut::with_capacity(row.len());
    let mut out = Vec::with_capacity(slots.len());
    for slot in slots {
        out.push(match slot {
            Slot::Text { start, end } => {
                let at = payload.len();
                unescape(row.get(start..end).unwrap_or_default(), &mut payload)?;
                Slot::Text { start: at, end: payload.len() }
            }
            other => other,
        });
    }
    Ok(Tuple::from_slots(payload.freeze(), out))
}

/// Undo COPY's escapes of one value into `out`.
fn unescape(field: &[u8], out: &mut BytesMut) -> Result<(), String> {
    let mut bytes = field.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.extend_from_slice(&[b]);
            continue;
        }
        let decoded = match bytes.next() {
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'v') => 0x0b,
            // `\\`, and any other character COPY would only escape as itself.
            Some(&c) if !c.is_ascii_digit() && c != b'x' => c,
            // COPY TO writes no octal or hex escapes; reading one as text would corrupt it.
            Some(&c) => return Err(format!("unexpected escape \\{} in a COPY value", c as char)),
            None => return Err("a COPY value ends in a lone backslash".into()),
        };
        out.extend_from_slice(&[decoded]);
    }
    Ok(())
}

/// `value` as a string literal whatever `standard_conforming_strings` says: `E'...'` with
/// backslashes and quotes doubled.
pub(super) fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Datum;

    fn row(line: &[u8], columns: usize) -> Result<Vec<Option<Vec<u8>>>, String> {
        let data = Bytes::from([line, b"\n"].concat());
        let (values, used) = next_row(&data, columns)?.ok_or("no whole row")?;
        assert_eq!(used, data.len(), "the row and its newline");
        Ok(values
            .iter()
            .map(|d| match d {
                Datum::Text(b) => Some(b.to_vec()),
                Datum::Null => None,
                other => panic!("COPY gives text or NULL, not {other:?}"),
            })
            .collect())
    }

    #[test]
    fn values_nulls_and_escapes_come_back_as_the_output_functions_wrote_them() {
        let values = row(b"1\t\\N\ta\\tb\\nc\\\\d\\re\\bf\\fg\\vh\t\t{\"x\\\\\"}", 5).expect("row");
        assert_eq!(
            values,
            vec![Some(b"1".to_vec()), None, Some(b"a\tb\nc\\d\re\x08f\x0cg\x0bh".to_vec()), Some(Vec::new()), Some(b"{\"x\\\"}".to_vec()),]
        );
        // The text `\N` (not NULL) is escaped by COPY as `\\N`.
        assert_eq!(row(b"\\\\N", 1).expect("row"), vec![Some(b"\\N".to_vec())]);
        assert_eq!(row("é\t✓".as_bytes(), 2).expect("row"), vec![Some("é".as_bytes().to_vec()), Some("✓".as_bytes().to_vec())]);
    }

    #[test]
    fn a_row_with_the_wrong_number_of_values_or_a_broken_escape_is_an_error() {
        assert!(row(b"1\t2", 3).is_err());
        assert!(row(b"1\t2\t3", 2).is_err());
        assert!(row(b"a\\", 1).is_err());
        assert!(row(b"\\101", 1).is_err());
    }

    #[test]
    fn a_row_is_taken_only_whole_and_one_at_a_time() {
        let data = Bytes::from_static(b"1\tab\n2\tc");
        let (values, used) = next_row(&data, 2).expect("valid").expect("the first row is whole");
        let values: Vec<Datum> = values.iter().collect();
        assert_eq!((values.len(), used), (2, 5));
        assert!(next_row(&data.slice(used..), 2).expect("valid so far").is_none(), "the second row has no newline yet");
        // A backslash at the end of the data waits for its escaped byte.
        assert!(next_row(&Bytes::from_static(b"a\\"), 1).expect("valid so far").is_none());
        assert!(next_row(&Bytes::from_static(b"\xff\xfe\n"), 1).is_err(), "not UTF-8");
        assert!(next_row(&Bytes::from_static(b"a\\\n"), 1).is_err(), "a backslash before the row's end");
    }

    /// A value as COPY TO writes it in text format.
    fn copy_escape(value: &str) -> String {
        let mut out = String::new();
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\u{b}' => out.push_str("\\v"),
                c => out.push(c),
            }
        }
        out
    }

    proptest::proptest! {
        // Failures are reported, not persisted into the source tree.
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]
        #[test]
        fn rows_come_back_value_for_value(rows in proptest::collection::vec(proptest::collection::vec(proptest::option::of("(?s).{0,12}"), 3), 1..4)) {
            let text: String = rows
                .iter()
                .map(|row| {
                    let values: Vec<String> = row.iter().map(|v| v.as_deref().map_or_else(|| "\\N".to_string(), copy_escape)).collect();
                    values.join("\t") + "\n"
                })
                .collect();
            let mut data = Bytes::from(text);
            for row in &rows {
                let (values, used) = next_row(&data, 3).expect("valid").expect("whole");
                let got: Vec<Option<String>> = values
                    .iter()
                    .map(|d| match d {
                        Datum::Text(b) => Some(String::from_utf8(b.to_vec()).expect("utf-8")),
                        _ => None,
                    })
                    .collect();
                proptest::prop_assert_eq!(&got, row);
                data = data.slice(used..);
            }
            proptest::prop_assert!(data.is_empty());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]
        /// The word-at-a-time scan stops where a byte-by-byte one does, wherever the stop lies
        /// in a word and whatever follows it in that word.
        #[test]
        fn the_word_scan_stops_where_the_byte_scan_does(
            bytes in proptest::collection::vec(proptest::sample::select(vec![b'a', b'\t', b'\n', b'\\', 0x00, 0x01, 0x08, 0x09, 0x0b, 0x5b, 0x5d, 0x7f, 0x80, 0xc3, 0xff]), 0..40),
            from in 0usize..42,
            ascii: bool,
        ) {
            let expected = bytes
                .get(from..)
                .and_then(|rest| rest.iter().position(|&b| matches!(b, b'\t' | b'\n' | b'\\') || (ascii && b >= 0x80)))
                .map(|p| from + p);
            proptest::prop_assert_eq!(next_stop(&bytes, from, ascii), expected);
        }
    }

    #[test]
    fn literals_survive_quotes_and_backslashes() {
        assert_eq!(literal("42"), "E'42'");
        assert_eq!(literal(r"it's a \ test"), r"E'it''s a \\ test'");
    }
}
