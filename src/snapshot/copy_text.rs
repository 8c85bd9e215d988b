//! Rows of `COPY (SELECT ...) TO STDOUT` in text format, and the literals spliced into that
//! query (COPY takes no parameters). In text format every value is its type's output function's
//! text, as pgoutput streams it; COPY only escapes it: tab between values, newline after the
//! row, `\N` for NULL, and a backslash before `\`, the delimiter and the control characters
//! `\b \f \n \r \t \v` (written as those letters).

use std::ops::Range;

use bytes::BytesMut;

/// Append the values of one row (`line`, without its newline) to `text`, pushing one span of
/// `text` per value (`None`: NULL) onto `spans`. An error says what is wrong with the row.
pub(super) fn split_row(line: &[u8], columns: usize, text: &mut BytesMut, spans: &mut Vec<Option<Range<usize>>>) -> Result<(), String> {
    let mut fields = 0usize;
    for field in line.split(|&b| b == b'\t') {
        fields += 1;
        if fields > columns {
            break;
        }
        if field == b"\\N" {
            spans.push(None);
            continue;
        }
        let at = text.len();
        if field.contains(&b'\\') {
            unescape(field, text)?;
        } else {
            text.extend_from_slice(field);
        }
        spans.push(Some(at..text.len()));
    }
    if fields != columns {
        return Err(format!("a row of COPY has {fields} values, expected {columns}"));
    }
    Ok(())
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

    fn row(line: &[u8], columns: usize) -> Result<Vec<Option<Vec<u8>>>, String> {
        let (mut text, mut spans) = (BytesMut::new(), Vec::new());
        split_row(line, columns, &mut text, &mut spans)?;
        Ok(spans.into_iter().map(|s| s.map(|r| text[r].to_vec())).collect())
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
    fn literals_survive_quotes_and_backslashes() {
        assert_eq!(literal("42"), "E'42'");
        assert_eq!(literal(r"it's a \ test"), r"E'it''s a \\ test'");
    }
}
