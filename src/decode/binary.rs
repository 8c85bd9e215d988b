//! Values in their type's binary send format. A snapshot reads a table by binary COPY, since
//! Postgres's send functions cost it less than its output functions (a `timestamptz` or a
//! `numeric` is printed for every row otherwise): a column of a type here stays in its send
//! format in the tuple (`Datum::Binary`) until a sink needs it, on the sink's thread, where it
//! is written as JSON straight from its bytes (integers, booleans, numerics, timestamps) or
//! first turned into exactly the text its output function writes under walcast's pinned
//! session settings (`DateStyle` ISO, `TimeZone` UTC). Either way a value reads byte for byte
//! as the same value in text format does, snapshot and stream alike.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::value::oid;
use super::{civil_from_days, write_json_value, DecodeError, UNIX_TO_PG_DAYS};

/// How a binary COPY sends a column of some type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyForm {
    /// The type's send format, kept as it is: [`write_json_binary`] and [`with_text`] read it.
    Send,
    /// The text itself (`text`, `varchar`, `bpchar`, `name`, `json`): kept as text.
    Text,
    /// `jsonb`: a version byte (1), then the text.
    Jsonb,
}

/// How a binary COPY of a column of built-in type `type_oid` reads, `None` for a type it must
/// select through its output function (a user-defined type, an array and every other type).
pub(crate) fn copy_form(type_oid: u32) -> Option<CopyForm> {
    match type_oid {
        oid::TEXT | oid::NAME | oid::JSON | oid::BPCHAR | oid::VARCHAR => Some(CopyForm::Text),
        oid::JSONB => Some(CopyForm::Jsonb),
        _ => Kind::of(type_oid).map(|_| CopyForm::Send),
    }
}

/// The types kept in their send format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Numeric,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
}

impl Kind {
    fn of(type_oid: u32) -> Option<Kind> {
        Some(match type_oid {
            oid::BOOL => Kind::Bool,
            oid::INT8 => Kind::Int8,
            oid::INT2 => Kind::Int2,
            oid::INT4 => Kind::Int4,
            oid::DATE => Kind::Date,
            oid::TIMESTAMP => Kind::Timestamp,
            oid::TIMESTAMPTZ => Kind::Timestamptz,
            oid::NUMERIC => Kind::Numeric,
            oid::UUID => Kind::Uuid,
            _ => return None,
        })
    }
}

/// Whether values of type `type_oid` are kept in their send format ([`CopyForm::Send`]).
pub(crate) fn is_send_format(type_oid: u32) -> bool {
    Kind::of(type_oid).is_some()
}

/// Append the output-function text of `v`, a value of type `type_oid` in its send format; an
/// error for a type not kept in it ([`CopyForm::Send`]) or a malformed value.
fn write_text(out: &mut Vec<u8>, type_oid: u32, v: &[u8]) -> Result<(), String> {
    let kind = Kind::of(type_oid).ok_or_else(|| format!("type oid {type_oid} is not read in binary format"))?;
    write_kind(out, kind, v)
}

thread_local! {
    /// The text of one converted value: sinks convert one value at a time, on their own thread.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `f` of the output-function text of `v`, a value of type `type_oid` in its send format,
/// converted in a buffer kept per thread (nothing allocated per value); an error for a type not
/// kept in its send format or a malformed value.
pub(crate) fn with_text<R>(type_oid: u32, v: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
    SCRATCH.with(|cell| {
        // Taken out, not borrowed: `f` may convert another value.
        let mut text = cell.take();
        text.clear();
        let result = write_text(&mut text, type_oid, v).map(|()| f(&text));
        cell.set(text);
        result
    })
}

/// Append the JSON of a value in binary format: a type kept in its send format as its text's
/// rule (`write_json_value`) writes the value; any other type's bytes as a base64 string
/// (walcast asks for no other binary value). Not inlined: it would grow the streaming path's
/// value writer, which never sees a binary value.
#[inline(never)]
pub fn write_json_binary(out: &mut Vec<u8>, type_oid: u32, v: &[u8]) -> Result<(), DecodeError> {
    let Some(kind) = Kind::of(type_oid) else {
        out.push(b'"');
        out.extend_from_slice(BASE64.encode(v).as_bytes());
        out.push(b'"');
        return Ok(());
    };
    if write_common_json(out, kind, v) {
        return Ok(());
    }
    with_text(type_oid, v, |text| write_json_value(out, type_oid, text)).map_err(|reason| DecodeError::Value { type_oid, reason })?
}

/// The JSON of a common value written from its send format, byte for byte what
/// `write_json_value` writes for its text: integers, booleans, numerics, and timestamps of the
/// years 1 to 9999. `false` (and nothing written) for any other value, which goes through its
/// text.
#[inline]
fn write_common_json(out: &mut Vec<u8>, kind: Kind, v: &[u8]) -> bool {
    let mut int = itoa::Buffer::new();
    match (kind, v.len()) {
        (Kind::Int8, 8) => out.extend_from_slice(int.format(i64::from_be_bytes(v.try_into().unwrap_or_default())).as_bytes()),
        (Kind::Int4, 4) => out.extend_from_slice(int.format(i32::from_be_bytes(v.try_into().unwrap_or_default())).as_bytes()),
        (Kind::Int2, 2) => out.extend_from_slice(int.format(i16::from_be_bytes(v.try_into().unwrap_or_default())).as_bytes()),
        (Kind::Bool, 1) if v[0] <= 1 => out.extend_from_slice(if v[0] == 1 { b"true" } else { b"false" }),
        (Kind::Numeric, _) => {
            // A string of its exact text (NaN and the infinities too).
            let at = out.len();
            out.push(b'"');
            if write_numeric(out, v).is_none() {
                out.truncate(at);
                return false;
            }
            out.push(b'"');
        }
        (Kind::Timestamp | Kind::Timestamptz, 8) => {
            let micros = i64::from_be_bytes(v.try_into().unwrap_or_default());
            let (days, of_day) = (micros.div_euclid(MICROS_PER_DAY), micros.rem_euclid(MICROS_PER_DAY));
            let (year, month, day) = civil_from_days(days + UNIX_TO_PG_DAYS);
            if !(1..=9999).contains(&year) {
                return false;
            }
            // `YYYY-MM-DDTHH:MM:SS[.ffffff]` and `Z` in UTC, as the text's rule writes it.
            let year = year as u32;
            let (secs, fraction) = ((of_day / 1_000_000) as u32, (of_day % 1_000_000) as u32);
            let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
            out.extend_from_slice(&[
                b'"',
                digit(year / 1000),
                digit(year / 100),
                digit(year / 10),
                digit(year),
                b'-',
                digit(month / 10),
                digit(month),
                b'-',
                digit(day / 10),
                digit(day),
                b'T',
                digit(h / 10),
                digit(h),
                b':',
                digit(m / 10),
                digit(m),
                b':',
                digit(s / 10),
                digit(s),
            ]);
            write_fraction(out, fraction);
            if kind == Kind::Timestamptz {
                out.push(b'Z');
            }
            out.push(b'"');
        }
        _ => return false,
    }
    true
}

/// `.ffffff` without trailing zeros; nothing for a whole second.
fn write_fraction(out: &mut Vec<u8>, fraction: u32) {
    if fraction != 0 {
        let mut text = [b'.', 0, 0, 0, 0, 0, 0];
        let mut rest = fraction;
        for slot in text[1..].iter_mut().rev() {
            *slot = digit(rest % 10);
            rest /= 10;
        }
        let shown = 7 - count_trailing_decimal_zeros(fraction);
        out.extend_from_slice(&text[..shown]);
    }
}

/// The value's text as the type's output function writes it.
fn write_kind(out: &mut Vec<u8>, kind: Kind, v: &[u8]) -> Result<(), String> {
    let bad = |what: &str| format!("a binary {what} value of {} bytes", v.len());
    let mut int = itoa::Buffer::new();
    match kind {
        Kind::Bool => match v {
            [0] => out.push(b'f'),
            [1] => out.push(b't'),
            _ => return Err(bad("boolean")),
        },
        Kind::Int2 => out.extend_from_slice(int.format(i16::from_be_bytes(v.try_into().map_err(|_| bad("smallint"))?)).as_bytes()),
        Kind::Int4 => out.extend_from_slice(int.format(i32::from_be_bytes(v.try_into().map_err(|_| bad("integer"))?)).as_bytes()),
        Kind::Int8 => out.extend_from_slice(int.format(i64::from_be_bytes(v.try_into().map_err(|_| bad("bigint"))?)).as_bytes()),
        Kind::Numeric => write_numeric(out, v).ok_or_else(|| bad("numeric"))?,
        Kind::Date => match i32::from_be_bytes(v.try_into().map_err(|_| bad("date"))?) {
            i32::MIN => out.extend_from_slice(b"-infinity"),
            i32::MAX => out.extend_from_slice(b"infinity"),
            days => {
                let year = write_date(out, i64::from(days));
                if year <= 0 {
                    out.extend_from_slice(b" BC");
                }
            }
        },
        Kind::Timestamp | Kind::Timestamptz => match i64::from_be_bytes(v.try_into().map_err(|_| bad("timestamp"))?) {
            i64::MIN => out.extend_from_slice(b"-infinity"),
            i64::MAX => out.extend_from_slice(b"infinity"),
            micros => write_timestamp(out, micros, kind == Kind::Timestamptz),
        },
        Kind::Uuid => {
            let v: &[u8; 16] = v.try_into().map_err(|_| bad("uuid"))?;
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for (i, b) in v.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push(b'-');
                }
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    Ok(())
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// `YYYY-MM-DD` of `days` since 2000-01-01 (the year of a BC date as its number before Christ,
/// at least four digits); returns the astronomical year (0 is 1 BC).
fn write_date(out: &mut Vec<u8>, days: i64) -> i64 {
    let (year, month, day) = civil_from_days(days + UNIX_TO_PG_DAYS);
    let shown = if year > 0 { year } else { 1 - year }.unsigned_abs();
    if shown < 10_000 {
        let shown = shown as u32;
        out.extend_from_slice(&[digit(shown / 1000), digit(shown / 100 % 10), digit(shown / 10 % 10), digit(shown % 10)]);
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(shown).as_bytes());
    }
    out.extend_from_slice(&[b'-', digit(month / 10), digit(month % 10), b'-', digit(day / 10), digit(day % 10)]);
    year
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (fraction without trailing zeros), `+00` for a timestamptz
/// (the session's time zone is UTC), ` BC` last.
fn write_timestamp(out: &mut Vec<u8>, micros: i64, with_zone: bool) {
    let (days, of_day) = (micros.div_euclid(MICROS_PER_DAY), micros.rem_euclid(MICROS_PER_DAY));
    let year = write_date(out, days);
    // Both below a day: the casts keep every value.
    let (secs, fraction) = ((of_day / 1_000_000) as u32, (of_day % 1_000_000) as u32);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    out.extend_from_slice(&[b' ', digit(h / 10), digit(h % 10), b':', digit(m / 10), digit(m % 10), b':', digit(s / 10), digit(s % 10)]);
    write_fraction(out, fraction);
    if with_zone {
        out.extend_from_slice(b"+00");
    }
    if year <= 0 {
        out.extend_from_slice(b" BC");
    }
}

/// The ASCII digit of `v` (below 10).
fn digit(v: u32) -> u8 {
    b'0' + (v % 10) as u8
}

/// Decimal zeros `v` (not 0) ends in.
fn count_trailing_decimal_zeros(mut v: u32) -> usize {
    let mut zeros = 0;
    while v.is_multiple_of(10) {
        v /= 10;
        zeros += 1;
    }
    zeros
}

/// A numeric's send format (digit count, weight, sign, display scale, then base-10000 digits)
/// as `numeric_out` writes it: the integer part without leading zeros (`0` when there is none),
/// then exactly the display scale's digits; `NaN`, `Infinity`, `-Infinity`. `None` if malformed.
fn write_numeric(out: &mut Vec<u8>, v: &[u8]) -> Option<()> {
    let field = |i: usize| -> Option<u16> { Some(u16::from_be_bytes(v.get(i * 2..i * 2 + 2)?.try_into().ok()?)) };
    let ndigits = usize::from(field(0)?);
    let weight = i64::from(field(1)? as i16);
    let (sign, dscale) = (field(2)?, usize::from(field(3)?));
    if v.len() != 8 + 2 * ndigits {
        return None;
    }
    match sign {
        0x0000 => {}
        0x4000 => out.push(b'-'),
        0xC000 | 0xD000 | 0xF000 => {
            out.extend_from_slice(match sign {
                0xC000 => b"NaN",
                0xD000 => b"Infinity",
                _ => b"-Infinity",
            });
            return Some(());
        }
        _ => return None,
    }
    if (0..ndigits).any(|i| field(4 + i).is_none_or(|d| d > 9999)) {
        return None;
    }
    let group = |d: i64| usize::try_from(d).ok().filter(|&d| d < ndigits).and_then(|d| field(4 + d)).map_or(0, u32::from);
    let four = |out: &mut Vec<u8>, g: u32| out.extend_from_slice(&[digit(g / 1000), digit(g / 100), digit(g / 10), digit(g)]);
    if weight < 0 {
        out.push(b'0');
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(group(0)).as_bytes());
        for d in 1..=weight {
            four(out, group(d));
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let end = out.len() + dscale;
        let mut d = weight + 1;
        while out.len() < end {
            four(out, group(d));
            d += 1;
        }
        out.truncate(end);
    }
    Some(())
}

#[cfg(test)]
mod tests;
