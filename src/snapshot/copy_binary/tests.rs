use super::*;
use crate::decode::binary::CopyForm;

/// A binary COPY of `rows` (values as sent, `None` for NULL), header and trailer included.
fn copy(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
    let mut data = SIGNATURE.to_vec();
    data.extend_from_slice(&[0; 8]);
    for row in rows {
        data.extend_from_slice(&(row.len() as i16).to_be_bytes());
        for v in row {
            match v {
                Some(v) => {
                    data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    data.extend_from_slice(v);
                }
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    data
}

#[test]
fn rows_are_read_whole_at_any_split_and_the_trailer_ends_them() {
    let one = 1i64.to_be_bytes();
    let two = 2i64.to_be_bytes();
    let data = copy(&[vec![Some(&one[..]), Some(b"a"), None], vec![Some(&two[..]), Some(b""), Some(b"\x01[]")]]);
    let binary = [CopyForm::Send, CopyForm::Text, CopyForm::Jsonb];
    // Fed from the start up to every length: nothing until a row is whole, then the same rows.
    for cut in 0..=data.len() {
        let (mut header, mut at, mut seen) = (true, 0, Vec::new());
        let mut ended = false;
        while let Some(item) = next_row(&Bytes::copy_from_slice(&data[at..cut]), &binary, &mut header).expect("valid") {
            match item {
                Item::Row(tuple, used) => {
                    seen.push(format!("{:?}", tuple.iter().collect::<Vec<_>>()));
                    at += used;
                }
                Item::End(used) => {
                    at += used;
                    ended = true;
                    break;
                }
            }
        }
        assert!(header == (at == 0), "the header is read with the first row");
        assert_eq!(ended, cut == data.len());
        let expected = [
            r#"[Binary(b"\x00\x00\x00\x00\x00\x00\x00\x01"), Text(b"a"), Null]"#,
            r#"[Binary(b"\x00\x00\x00\x00\x00\x00\x00\x02"), Text(b""), Text(b"[]")]"#,
        ];
        assert_eq!(seen, expected[..seen.len()], "cut at {cut}");
    }
}

#[test]
fn a_malformed_copy_is_an_error() {
    let bytes = |v: &[u8]| Bytes::copy_from_slice(v);
    let send = [CopyForm::Send];
    assert!(next_row(&bytes(b"PGCOPY\n\xff\r\n\x01\0\0\0\0\0\0\0\0\0"), &send, &mut true).is_err(), "signature");
    let two = copy(&[vec![Some(&1i32.to_be_bytes()[..]), None]]);
    assert!(next_row(&bytes(&two), &send, &mut true).is_err(), "two values for one column");
    let latin1 = copy(&[vec![Some(b"\xe9")]]);
    assert!(next_row(&bytes(&latin1), &[CopyForm::Text], &mut true).is_err(), "text that is not UTF-8");
    assert!(next_row(&bytes(&latin1), &send, &mut true).is_ok(), "a send format is not text");
    let jsonb2 = copy(&[vec![Some(b"\x02{}")]]);
    assert!(next_row(&bytes(&jsonb2), &[CopyForm::Jsonb], &mut true).is_err(), "a jsonb version walcast does not know");
}
