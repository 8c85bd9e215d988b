//! Rows of `COPY (SELECT ...) TO STDOUT (FORMAT binary)`. Postgres's text output functions cost
//! it more than its binary send functions for the common built-in types (a `timestamptz` or a
//! `numeric` is printed by the server for every row of a snapshot), so those columns are read
//! in their send format and left so in the tuple (`Datum::Binary`): a sink writes them where it
//! needs them (`decode::binary`), on its own thread. Text types arrive as their text; every
//! other column is selected through its output function cast to `text`, whose binary form is
//! the text itself. Binary COPY skips the client-encoding conversion, so it is used only on a
//! UTF-8 database.

use bytes::Bytes;

use crate::decode::binary::CopyForm;
use crate::decode::{Slot, Tuple};

/// The binary COPY header: signature, flags, header extension length.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// What [`next_row`] found at the start of the data.
pub(super) enum Item {
    /// A row and the bytes it took.
    Row(Tuple, usize),
    /// The end of the COPY data (its trailer) and the bytes it took.
    End(usize),
}

/// The next item of `data` (received messages, starting at a row or, when `header`, at the
/// COPY's header, which is then skipped and `header` cleared); `None` when `data` does not
/// hold a whole one yet. `forms[i]`: how column `i` is sent. A value in its send format stays
/// so (`Slot::Binary`), a text (jsonb's after its version byte) is checked to be UTF-8 and kept
/// as text. Values are slices of `data`: no copy. Inlined: a row returned through memory is
/// read back before its stores have landed, which stalls.
#[inline(always)]
pub(super) fn next_row(data: &Bytes, forms: &[CopyForm], header: &mut bool) -> Result<Option<Item>, String> {
    let mut at = 0;
    if *header {
        let Some(after) = header_end(data)? else { return Ok(None) };
        at = after;
    }
    let Some(count) = read_i16(data, at) else { return Ok(None) };
    at += 2;
    if count == -1 {
        *header = false;
        return Ok(Some(Item::End(at)));
    }
    if usize::try_from(count).ok() != Some(forms.len()) {
        return Err(format!("a row of COPY has {count} values, expected {}", forms.len()));
    }
    let row_start = at;
    let mut slots = Vec::with_capacity(forms.len());
    for &form in forms {
        let Some(len) = read_i32(data, at) else { return Ok(None) };
        at += 4;
        if len == -1 {
            slots.push(Slot::Null);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| format!("a COPY value has length {len}"))?;
        let Some(value) = data.get(at..at + len) else { return Ok(None) };
        let (start, end) = (at - row_start, at - row_start + len);
        at += len;
        slots.push(match form {
            CopyForm::Send => Slot::Binary { start, end },
            CopyForm::Text => {
                utf8(value)?;
                Slot::Text { start, end }
            }
            CopyForm::Jsonb => match value.split_first() {
                Some((1, text)) => {
                    utf8(text)?;
                    Slot::Text { start: start + 1, end }
                }
                _ => return Err("a jsonb value of an unknown version".into()),
            },
        });
    }
    let tuple = Tuple::from_slots(data.slice(row_start..at), slots).ok_or("a value lies outside its row")?;
    *header = false;
    Ok(Some(Item::Row(tuple, at)))
}

fn utf8(text: &[u8]) -> Result<(), String> {
    if !text.is_ascii() && std::str::from_utf8(text).is_err() {
        return Err("a value is not valid UTF-8".into());
    }
    Ok(())
}

/// Where the header of a binary COPY ends in `data`, `None` if `data` is shorter.
fn header_end(data: &[u8]) -> Result<Option<usize>, String> {
    let Some(signature) = data.get(..SIGNATURE.len()) else { return Ok(None) };
    if signature != SIGNATURE {
        return Err("a binary COPY does not start with its signature".into());
    }
    let Some(extension) = read_i32(data, SIGNATURE.len() + 4) else { return Ok(None) };
    let extension = usize::try_from(extension).map_err(|_| format!("a binary COPY header extension of {extension} bytes"))?;
    let end = SIGNATURE.len() + 8 + extension;
    Ok((data.len() >= end).then_some(end))
}

fn read_i16(data: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn read_i32(data: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests;
