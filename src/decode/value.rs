//! Text-format column values -> JSON.
//!
//! The walsender session is pinned to `datestyle=ISO,YMD`, `intervalstyle=iso_8601`,
//! `timezone=UTC`, `extra_float_digits=3` and `bytea_output=hex`, so each built-in type's output
//! has one known shape. Values are validated as they are copied straight into the caller's
//! buffer: whatever is written is valid JSON, and nothing is allocated for scalar values.
//! Numbers are copied digit for digit (never through `f64`), so no precision is lost.

use base64::Engine as _;

use super::DecodeError;

/// Built-in type OIDs (Postgres 15 `pg_type`) that get a rule other than "JSON string".
pub(super) mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// Postgres's `MAXDIM`: arrays have at most six dimensions.
const MAX_ARRAY_DIMS: usize = 6;

/// Why a value was rejected; turned into [`DecodeError::Value`] (with the OID) only on failure,
/// so the success path never formats anything.
type Fail = &'static str;

/// Append the JSON form of one text-format value of type `type_oid` to `out`.
///
/// Rules, by type: `bool` -> `true`/`false`; `int2`/`int4`/`int8`/`oid` -> numbers (range
/// checked); `float4`/`float8` -> numbers, with `NaN`/`Infinity`/`-Infinity` as strings;
/// `numeric` -> a string of its exact text; `json`/`jsonb` -> embedded JSON (whitespace between
/// tokens dropped, so one value stays on one line); `bytea` -> base64 string; `date`,
/// `timestamp`, `timestamptz`, `time`, `timetz` -> ISO 8601 strings (`T` separator, `Z` for UTC,
/// `+hh:mm` offsets, BC years as astronomical negative years); built-in array types -> JSON
/// arrays of their elements converted by the element type's rule; everything else (text types,
/// `uuid`, `interval`, network, geometric, range, ... and unknown OIDs) -> a JSON string of the
/// text.
///
/// On error `out` is left as it was.
#[inline]
pub fn write_json_value(out: &mut Vec<u8>, type_oid: u32, text: &[u8]) -> Result<(), DecodeError> {
    let start = out.len();
    match write_value(out, type_oid, text) {
        Ok(()) => Ok(()),
        Err(reason) => Err(value_error(out, start, type_oid, reason)),
    }
}

/// Undoes a rejected value's partial output; the error for it.
#[cold]
#[inline(never)]
fn value_error(out: &mut Vec<u8>, start: usize, type_oid: u32, reason: Fail) -> DecodeError {
    out.truncate(start);
    DecodeError::Value { type_oid, reason: reason.to_owned() }
}

/// [`write_json_value`] without the error's allocation.
fn write_value(out: &mut Vec<u8>, type_oid: u32, text: &[u8]) -> Result<(), Fail> {
    // The scalar types first: most values are, and the array table is a long match. The most
    // common ones are written here, without a second dispatch.
    match type_oid {
        oid::INT8 => write_int(out, text, i64::MAX as u64, 1 << 63),
        oid::INT4 => write_int(out, text, i32::MAX as u64, 1 << 31),
        oid::TIMESTAMPTZ => write_timestamp(out, text, true),
        oid::NUMERIC => write_numeric(out, text),
        oid::BOOL
        | oid::BYTEA
        | oid::INT2
        | oid::OID
        | oid::JSON
        | oid::FLOAT4
        | oid::FLOAT8
        | oid::DATE
        | oid::TIME
        | oid::TIMESTAMP
        | oid::TIMETZ
        | oid::UUID
        | oid::JSONB => write_scalar(out, type_oid, text),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => write_string(out, text),
        _ => match array_element(type_oid) {
            Some((elem, delim)) => write_array(out, elem, delim, text),
            None => write_scalar(out, type_oid, text),
        },
    }
}

/// The JSON form of one text-format value, as a `serde_json::Value`.
pub fn to_json_value(type_oid: u32, text: &[u8]) -> Result<serde_json::Value, DecodeError> {
    let mut out = Vec::with_capacity(text.len() + 8);
    write_json_value(&mut out, type_oid, text)?;
    serde_json::from_slice(&out).map_err(|e| DecodeError::Value { type_oid, reason: e.to_string() })
}

/// One non-array value (also used for array elements).
#[inline]
fn write_scalar(out: &mut Vec<u8>, type_oid: u32, text: &[u8]) -> Result<(), Fail> {
    match type_oid {
        oid::BOOL => match text {
            b"t" => out.extend_from_slice(b"true"),
            b"f" => out.extend_from_slice(b"false"),
            _ => return Err("bool is not 't' or 'f'"),
        },
        oid::INT2 => write_int(out, text, i16::MAX as u64, 1 << 15)?,
        oid::INT4 => write_int(out, text, i32::MAX as u64, 1 << 31)?,
        oid::INT8 => write_int(out, text, i64::MAX as u64, 1 << 63)?,
        oid::OID => write_int(out, text, u64::from(u32::MAX), 0)?,
        oid::FLOAT4 | oid::FLOAT8 => write_float(out, text)?,
        oid::NUMERIC => write_numeric(out, text)?,
        oid::JSON | oid::JSONB => write_json_text(out, text)?,
        oid::BYTEA => write_bytea(out, text)?,
        oid::DATE => write_date(out, text)?,
        oid::TIMESTAMP => write_timestamp(out, text, false)?,
        oid::TIMESTAMPTZ => write_timestamp(out, text, true)?,
        oid::TIME => write_time(out, text, false)?,
        oid::TIMETZ => write_time(out, text, true)?,
        oid::UUID => write_uuid(out, text)?,
        _ => write_string(out, text)?,
    }
    Ok(())
}

/// Element type and delimiter of every built-in array type in Postgres 15's `pg_type`.
/// `box` is the only built-in type whose `typdelim` is not ','.
pub(crate) fn array_element(array_oid: u32) -> Option<(u32, u8)> {
    let elem = match array_oid {
        1000 => 16,                       // bool
        1001 => 17,                       // bytea
        1002 => 18,                       // "char"
        1003 => 19,                       // name
        1016 => 20,                       // int8
        1005 => 21,                       // int2
        1006 => 22,                       // int2vector
        1007 => 23,                       // int4
        1008 => 24,                       // regproc
        1009 => 25,                       // text
        1028 => 26,                       // oid
        1010 => 27,                       // tid
        1011 => 28,                       // xid
        1012 => 29,                       // cid
        1013 => 30,                       // oidvector
        210 => 71,                        // pg_type (row type)
        270 => 75,                        // pg_attribute (row type)
        272 => 81,                        // pg_proc (row type)
        273 => 83,                        // pg_class (row type)
        199 => 114,                       // json
        143 => 142,                       // xml
        271 => 5069,                      // xid8
        1017 => 600,                      // point
        1018 => 601,                      // lseg
        1019 => 602,                      // path
        1020 => return Some((603, b';')), // box
        1027 => 604,                      // polygon
        629 => 628,                       // line
        1021 => 700,                      // float4
        1022 => 701,                      // float8
        719 => 718,                       // circle
        791 => 790,                       // money
        1040 => 829,                      // macaddr
        1041 => 869,                      // inet
        651 => 650,                       // cidr
        775 => 774,                       // macaddr8
        1034 => 1033,                     // aclitem
        1014 => 1042,                     // bpchar
        1015 => 1043,                     // varchar
        1182 => 1082,                     // date
        1183 => 1083,                     // time
        1115 => 1114,                     // timestamp
        1185 => 1184,                     // timestamptz
        1187 => 1186,                     // interval
        1270 => 1266,                     // timetz
        1561 => 1560,                     // bit
        1563 => 1562,                     // varbit
        1231 => 1700,                     // numeric
        2201 => 1790,                     // refcursor
        2207 => 2202,                     // regprocedure
        2208 => 2203,                     // regoper
        2209 => 2204,                     // regoperator
        2210 => 2205,                     // regclass
        4192 => 4191,                     // regcollation
        2211 => 2206,                     // regtype
        4097 => 4096,                     // regrole
        4090 => 4089,                     // regnamespace
        2951 => 2950,                     // uuid
        3221 => 3220,                     // pg_lsn
        3643 => 3614,                     // tsvector
        3644 => 3642,                     // gtsvector
        3645 => 3615,                     // tsquery
        3735 => 3734,                     // regconfig
        3770 => 3769,                     // regdictionary
        3807 => 3802,                     // jsonb
        4073 => 4072,                     // jsonpath
        2949 => 2970,                     // txid_snapshot
        5039 => 5038,                     // pg_snapshot
        3905 => 3904,                     // int4range
        3907 => 3906,                     // numrange
        3909 => 3908,                     // tsrange
        3911 => 3910,                     // tstzrange
        3913 => 3912,                     // daterange
        3927 => 3926,                     // int8range
        6150 => 4451,                     // int4multirange
        6151 => 4532,                     // nummultirange
        6152 => 4533,                     // tsmultirange
        6153 => 4534,                     // tstzmultirange
        6155 => 4535,                     // datemultirange
        6157 => 4536,                     // int8multirange
        2287 => 2249,                     // record
        1263 => 2275,                     // cstring
        _ => return None,
    };
    Some((elem, b','))
}

/// First OID that initdb does not assign (Postgres' `FirstNormalObjectId`): types below it are
/// built in and have their rule here; types from it on are user-defined (enums, domains,
/// composites, their arrays, extension types) and get the rule of a built-in type through
/// [`value_rule`].
pub const FIRST_USER_OID: u32 = 16384;

/// What `pg_type` says about a user-defined type: enough to choose its value rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserType {
    /// `typtype`: `b` base, `c` composite, `d` domain, `e` enum, `m` multirange, `p` pseudo,
    /// `r` range.
    pub typtype: u8,
    /// `typcategory`: `A` for array types.
    pub category: u8,
    /// `typelem`: an array type's element type, else 0.
    pub elem: u32,
    /// `typbasetype`: a domain's base type, else 0.
    pub base: u32,
    /// `typdelim`: the element delimiter in the text form of arrays of this type.
    pub delim: u8,
}

/// Domains and arrays nest (a domain over an array of a domain ...); deeper than this is not a
/// real schema, and such a value stays a string.
const MAX_TYPE_DEPTH: usize = 16;

/// The type OID whose rule [`write_json_value`] applies to values of type `oid`: a built-in
/// type its own; a domain its base type's; an array of user-defined elements the built-in array
/// type of its element's rule (`text[]` for elements written as strings); every other
/// user-defined type (enum, composite, range, extension types) `text`, a string of its text
/// form. `lookup` describes user-defined types; one it does not know (or a too deep nesting)
/// is `text` too.
pub fn value_rule(oid: u32, lookup: &impl Fn(u32) -> Option<UserType>) -> u32 {
    rule_at(oid, lookup, 0)
}

/// `text`: the rule of everything without a rule of its own.
const TEXT: u32 = 25;
/// `text[]`.
const TEXT_ARRAY: u32 = 1009;

fn rule_at(oid: u32, lookup: &impl Fn(u32) -> Option<UserType>, depth: usize) -> u32 {
    if oid < FIRST_USER_OID {
        return oid;
    }
    let Some(t) = lookup(oid).filter(|_| depth < MAX_TYPE_DEPTH) else { return TEXT };
    match t.typtype {
        b'd' => rule_at(t.base, lookup, depth + 1),
        _ if t.category == b'A' && t.elem != 0 => {
            let elem = rule_at(t.elem, lookup, depth + 1);
            // The element's own array type, when it is built in and parses with the same
            // delimiter; else the elements are strings.
            match array_of(elem) {
                Some(array) if array_element(array).is_some_and(|(_, d)| d == t.delim) => array,
                _ if t.delim == b',' => TEXT_ARRAY,
                // An extension's element type with another delimiter: the whole value as text.
                _ => TEXT,
            }
        }
        _ => TEXT,
    }
}

/// The built-in array type whose elements are `elem` (the inverse of [`array_element`]).
fn array_of(elem: u32) -> Option<u32> {
    // Called once per user-defined array type and connection, never per value.
    (0..FIRST_USER_OID).find(|&a| array_element(a).is_some_and(|(e, _)| e == elem))
}

// ---------------------------------------------------------------------------------------------
// Strings

/// 0: copy as is; otherwise the character after the backslash ('u' for `\u00XX`).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Whether a byte of the eight in `w` is a control character, '"', '\\' or not ASCII: one that
/// needs escaping or UTF-8 validation. Exact as a whole-word test (the borrows of the usual
/// "has a byte less than n" trick only mark bytes above one that matches).
#[inline]
fn word_needs_care(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let is_quote = quote.wrapping_sub(ONES) & !quote;
    let is_backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | is_quote | is_backslash | w) & HIGH != 0
}

/// Whether `text` is ASCII without control characters, '"' or '\\': its JSON string is the
/// text between quotes. Eight bytes at a time.
#[inline]
fn is_plain_ascii(text: &[u8]) -> bool {
    let mut words = text.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        if word_needs_care(u64::from_le_bytes(bytes)) {
            return false;
        }
    }
    words.remainder().iter().all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
}

/// A JSON string of `text`, which must be UTF-8.
#[inline(always)]
fn write_string(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Fail> {
    // Most text is plain ASCII: one pass, one copy.
    if is_plain_ascii(text) {
        write_plain_string(out, text);
        return Ok(());
    }
    if std::str::from_utf8(text).is_err() {
        return Err("not valid UTF-8");
    }
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in text.iter().enumerate() {
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&text[run..i]);
        if esc == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(&[b'\\', esc]);
        }
        run = i + 1;
    }
    out.extend_from_slice(&text[run..]);
    out.push(b'"');
    Ok(())
}

/// A JSON string of text already checked to need no escaping (ASCII, no quote or backslash).
#[inline(always)]
fn write_plain_string(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    put(out, text);
    out.push(b'"');
}

/// Appends `bytes`; up to 32 of them with fixed-size copies (two, overlapping, of the largest
/// width that fits) into a zeroed window that is then cut to size, instead of a call to
/// `memcpy`, which costs more than the copy for the short values most columns hold.
#[inline(always)]
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    if !(4..=32).contains(&n) {
        out.extend_from_slice(bytes);
        return;
    }
    let at = out.len();
    out.extend_from_slice(&[0u8; 32]);
    let dst = &mut out[at..at + n];
    if n >= 16 {
        dst[..16].copy_from_slice(&bytes[..16]);
        dst[n - 16..].copy_from_slice(&bytes[n - 16..]);
    } else if n >= 8 {
        dst[..8].copy_from_slice(&bytes[..8]);
        dst[n - 8..].copy_from_slice(&bytes[n - 8..]);
    } else {
        dst[..4].copy_from_slice(&bytes[..4]);
        dst[n - 4..].copy_from_slice(&bytes[n - 4..]);
    }
    out.truncate(at + n);
}

// ---------------------------------------------------------------------------------------------
// Numbers

/// An integer copied as is after checking it is `-?(0|[1-9][0-9]*)` within `[-max_neg, max_pos]`
/// (a leading zero would not be JSON; Postgres never prints one). `max_neg == 0` means unsigned.
#[inline(always)]
fn write_int(out: &mut Vec<u8>, text: &[u8], max_pos: u64, max_neg: u64) -> Result<(), Fail> {
    let (neg, digits) = match text {
        // Unsigned types (max_neg 0) never print a sign, not even "-0".
        [b'-', rest @ ..] if max_neg > 0 => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err("integer has no digits");
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return Err("integer has a leading zero");
    }
    if !all_digits(digits) {
        return Err("integer has a non-digit");
    }
    // Fewer digits than the bound has cannot exceed it, more always do: the value is only
    // needed at the bound's length (at most 20 digits; 19 for the signed bounds). Both lengths
    // are constants where this is inlined.
    let (max, max_len) = if neg { (max_neg, decimal_len(max_neg)) } else { (max_pos, decimal_len(max_pos)) };
    if digits.len() > max_len {
        return Err("integer out of range for its type");
    }
    if digits.len() == max_len {
        let v = if max_len < 20 {
            // Below 10^19: no overflow, and no check per digit on this hot path.
            Some(digits.iter().fold(0u64, |v, &d| v * 10 + u64::from(d - b'0')))
        } else {
            digits.iter().try_fold(0u64, |v, &d| v.checked_mul(10)?.checked_add(u64::from(d - b'0')))
        };
        if v.is_none_or(|v| v > max) {
            return Err("integer out of range for its type");
        }
    }
    put(out, text);
    Ok(())
}

/// Number of decimal digits of `v` (1 for 0).
#[inline]
fn decimal_len(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// Eight bytes as a little-endian word (`bytes` has at least eight).
#[inline]
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(w)
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// Whether every byte of `w` selected by `mask` (0xff bytes) is an ASCII digit: its high nibble
/// is 3 and adding 6 keeps it 3 (no byte carries: each is at most 0x3f before the add).
#[inline]
fn word_digits(w: u64, mask: u64) -> bool {
    let hi = (ONES * 0xf0) & mask;
    let three = (ONES * 0x30) & mask;
    w & hi == three && ((w & mask).wrapping_add((ONES * 0x06) & mask)) & hi == three
}

/// Whether `text` is all ASCII digits, eight bytes at a time.
#[inline]
fn all_digits(text: &[u8]) -> bool {
    if text.len() < 8 {
        return text.iter().fold(true, |ok, b| ok & b.is_ascii_digit());
    }
    let mut words = text.chunks_exact(8);
    let mut ok = true;
    for w in &mut words {
        ok &= word_digits(word(w), u64::MAX);
    }
    // The last eight bytes cover the remainder (overlapping is harmless for a check).
    ok && word_digits(word(&text[text.len() - 8..]), u64::MAX)
}

/// Length of the JSON number (RFC 8259 grammar) that `text` starts with; 0 if none.
fn json_number_len(text: &[u8]) -> usize {
    let n = text.len();
    let mut i = 0;
    if i < n && text[i] == b'-' {
        i += 1;
    }
    let digits = |i: usize| text[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    match text.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(i),
        _ => return 0,
    }
    if text.get(i) == Some(&b'.') {
        let d = digits(i + 1);
        if d == 0 {
            return 0;
        }
        i += 1 + d;
    }
    if matches!(text.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(text.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let d = digits(j);
        if d == 0 {
            return 0;
        }
        i = j + d;
    }
    i
}

/// float4/float8: a number as printed (shortest exact form with `extra_float_digits=3`);
/// the non-finite values have no JSON number form, so they become strings.
fn write_float(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Fail> {
    match text {
        b"NaN" | b"Infinity" | b"-Infinity" => write_plain_string(out, text),
        _ if !text.is_empty() && json_number_len(text) == text.len() => {
            // A number past a double's range is no float8 (the server never prints one) and
            // readers refuse it. Only an exponent or a long run of digits can get there.
            if (text.len() > 24 || text.iter().any(|&b| b == b'e' || b == b'E')) && !parses_finite(text) {
                return Err("floating-point number out of range");
            }
            out.extend_from_slice(text)
        }
        _ => return Err("not a floating-point number"),
    }
    Ok(())
}

/// Whether a JSON number's text is within a double's range.
#[cold]
fn parses_finite(text: &[u8]) -> bool {
    std::str::from_utf8(text).ok().and_then(|s| s.parse::<f64>().ok()).is_some_and(f64::is_finite)
}

/// The number of dots in `text` if it holds only digits and dots; eight bytes at a time.
#[inline]
fn digits_and_dots(text: &[u8]) -> Option<u32> {
    const HIGH: u64 = ONES * 0x80;
    const LOW7: u64 = ONES * 0x7f;
    let mut words = text.chunks_exact(8);
    let (mut dots, mut others) = (0u32, 0u64);
    for w in &mut words {
        let w = word(w);
        // Exact per-byte tests (no carry leaves a byte): `x` is zero where the byte is a dot,
        // `y` below ten where it is a digit.
        let x = w ^ (ONES * u64::from(b'.'));
        let dot = !(((x & LOW7) + LOW7) | x) & HIGH;
        let y = w ^ (ONES * u64::from(b'0'));
        let non_digit = (((y & LOW7) + ONES * 0x76) | y) & HIGH;
        dots += dot.count_ones();
        others |= non_digit & !dot;
    }
    for &b in words.remainder() {
        dots += u32::from(b == b'.');
        others |= u64::from(!b.is_ascii_digit() && b != b'.');
    }
    (others == 0).then_some(dots)
}

/// numeric: a string, so no consumer rounds it through a double.
#[inline(always)]
fn write_numeric(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Fail> {
    let valid = match text {
        b"NaN" | b"Infinity" | b"-Infinity" => true,
        _ => {
            let body = text.strip_prefix(b"-").unwrap_or(text);
            // `digits[.digits]`: only digits and at most one dot, which is neither first nor last.
            digits_and_dots(body).is_some_and(|dots| dots <= 1)
                && body.first().is_some_and(u8::is_ascii_digit)
                && body.last().is_some_and(u8::is_ascii_digit)
        }
    };
    if !valid {
        return Err("not a numeric value");
    }
    write_plain_string(out, text);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// uuid, bytea

fn write_uuid(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Fail> {
    let valid = text.len() == 36
        && text.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !valid {
        return Err("not a uuid");
    }
    write_plain_string(out, text);
    Ok(())
}

/// Hex digit values; 0xff marks a non-hex byte.
static HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// bytea in hex output (`\x0a0b`) -> standard base64, decoded and encoded in stack-sized chunks
/// so large values need no temporary heap buffer.
fn write_bytea(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Fail> {
    let hex = text.strip_prefix(b"\\x").ok_or("bytea is not in hex format (\\x...)")?;
    if hex.len() % 2 != 0 {
        return Err("bytea hex has an odd number of digits");
    }
    // A multiple of 3, so only the last chunk can need base64 padding.
    const CHUNK: usize = 768;
    let mut buf = [0u8; CHUNK];
    out.reserve(hex.len() / 2 / 3 * 4 + 6);
    out.push(b'"');
    for pairs in hex.chunks(CHUNK * 2) {
        let n = pairs.len() / 2;
        for (dst, pair) in buf.iter_mut().zip(pairs.chunks_exact(2)) {
            let (hi, lo) = (HEX_VALUE[usize::from(pair[0])], HEX_VALUE[usize::from(pair[1])]);
            if (hi | lo) == 0xff {
                return Err("bytea has a non-hex digit");
            }
            *dst = (hi << 4) | lo;
        }
        let at = out.len();
        let len = base64::encoded_len(n, true).ok_or("bytea too large")?;
        out.resize(at + len, 0);
        base64::engine::general_purpose::STANDARD.encode_slice(&buf[..n], &mut out[at..]).map_err(|_| "base64 buffer too small")?;
    }
    out.push(b'"');
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dates and times (datestyle ISO)

/// Count of leading ASCII digits.
#[inline]
fn digit_run(text: &[u8]) -> usize {
    text.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// Splits a trailing " BC" off.
#[inline]
fn split_bc(text: &[u8]) -> (&[u8], bool) {
    match text.strip_suffix(b" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

/// A `YYYY-MM-DD` prefix split into the parts that are written differently.
struct DateParts<'a> {
    /// Year digits (four or more).
    year: &'a [u8],
    /// `-MM-DD`.
    month_day: &'a [u8],
    /// Whatever follows the date.
    rest: &'a [u8],
}

/// Parses `YYYY-MM-DD` at the start of `text` (the year may have more digits).
fn split_date(text: &[u8]) -> Result<DateParts<'_>, Fail> {
    let y = digit_run(text);
    if !(4..=9).contains(&y) {
        return Err("date has a bad year");
    }
    let md = text.get(y..y + 6).ok_or("date is too short")?;
    let ok = md[0] == b'-' && md[3] == b'-' && md[1..3].iter().chain(&md[4..6]).all(u8::is_ascii_digit);
    if !ok {
        return Err("date is not YYYY-MM-DD");
    }
    Ok(DateParts { year: &text[..y], month_day: md, rest: &text[y + 6..] })
}

/// Writes the year, turning a BC year into an ISO 8601 (astronomical) one: 1 BC is year 0,
/// 44 BC is -0043.
fn write_year(out: &mut Vec<u8>, year: &[u8], bc: bool) -> Result<(), Fail> {
    if !bc {
        out.extend_from_slice(year);
        return Ok(());
    }
    // At most nine digits (checked by split_date), so this fits a u32.
    let y = year.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    let astronomical = y.checked_sub(1).ok_or("year 0 BC does not exist")?;
    if astronomical > 0 {
        out.push(b'-');
    }
    let mut digits = [b'0'; 10];
    let mut i = digits.len();
    let mut v = astronomical;
    loop {
        i -= 1;
        digits[i] += (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Zero-pad to four digits, like Postgres prints years.
    out.extend_from_slice(&digits[i.min(digits.len() - 4)..]);
    Ok(())
}

/// `HH:MM:SS` with optional fraction at the start of `text`; returns its length.
fn time_len(text: &[u8]) -> Result<usize, Fail> {
    let t = text.get(..8).ok_or("time is too short")?;
    let ok = t[2] == b':' && t[5] == b':' && [0, 1, 3, 4, 6, 7].iter().all(|&i| t[i].is_ascii_digit());
    if !ok {
        return Err("time is not HH:MM:SS");
    }
    if text.get(8) == Some(&b'.') {
        let f = digit_run(&text[9..]);
        if f == 0 {
            return Err("time has an empty fraction");
        }
        return Ok(9 + f);
    }
    Ok(8)
}

/// A UTC offset `+HH`, `+HH:MM` or `+HH:MM:SS` (the whole of `text`) as `Z` (zero), `+HH:MM`
/// or `+HH:MM:SS`.
fn write_offset(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Fail> {
    let ok = matches!(text.first(), Some(b'+' | b'-'))
        && matches!(text.len(), 3 | 6 | 9)
        && text[1..].iter().enumerate().all(|(i, b)| if i % 3 == 2 { *b == b':' } else { b.is_ascii_digit() });
    if !ok {
        return Err("bad UTC offset");
    }
    if text[1..].iter().all(|&b| b == b'0' || b == b':') {
        out.push(b'Z');
    } else {
        out.extend_from_slice(text);
        if text.len() == 3 {
            out.extend_from_slice(b":00");
        }
    }
    Ok(())
}

fn write_date(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Fail> {
    if text == b"infinity" || text == b"-infinity" {
        write_plain_string(out, text);
        return Ok(());
    }
    let (text, bc) = split_bc(text);
    let DateParts { year, month_day: md, rest } = split_date(text)?;
    if !rest.is_empty() {
        return Err("date has trailing characters");
    }
    out.push(b'"');
    write_year(out, year, bc)?;
    out.extend_from_slice(md);
    out.push(b'"');
    Ok(())
}

/// An eight-byte shape for [`fits`]: `d` stands for a digit, any other byte for itself.
struct Shape {
    /// 0xff where a digit goes.
    digits: u64,
    /// 0xff where a literal byte goes.
    literals: u64,
    /// The literal bytes, in place.
    literal: u64,
}

impl Shape {
    const fn new(p: &[u8; 8]) -> Shape {
        let (mut digits, mut literals, mut literal) = (0u64, 0u64, 0u64);
        let mut i = 0;
        while i < 8 {
            if p[i] == b'd' {
                digits |= 0xff << (8 * i);
            } else {
                literals |= 0xff << (8 * i);
                literal |= (p[i] as u64) << (8 * i);
            }
            i += 1;
        }
        Shape { digits, literals, literal }
    }
}

/// Whether the eight bytes at the start of `bytes` have `shape`.
#[inline]
fn fits(bytes: &[u8], shape: &Shape) -> bool {
    let w = word(bytes);
    w & shape.literals == shape.literal && word_digits(w, shape.digits)
}

/// The shape nearly every timestamp has (a four-digit year, no era, a `+00` offset when with time
/// zone): its JSON in one copy, the space turned into `T`. False, with nothing written, for any
/// other text, which the general path then decides on.
#[inline(always)]
fn write_common_timestamp(out: &mut Vec<u8>, text: &[u8], with_tz: bool) -> bool {
    const DATE: Shape = Shape::new(b"dddd-dd-");
    const DAY_HOUR: Shape = Shape::new(b"dd dd:dd");
    const TIME: Shape = Shape::new(b"dd:dd:dd");
    if text.len() < 19 || !(fits(text, &DATE) && fits(&text[8..], &DAY_HOUR) && fits(&text[11..], &TIME)) {
        return false;
    }
    let mut end = 19;
    if text.get(19) == Some(&b'.') {
        let f = digit_run(&text[20..]);
        if f == 0 {
            return false;
        }
        end = 20 + f;
    }
    let offset = &text[end..];
    let common = if with_tz { offset.len() == 3 && offset[0] == b'+' && offset[1] == b'0' && offset[2] == b'0' } else { offset.is_empty() };
    if !common {
        return false;
    }
    out.reserve(end + 3);
    out.push(b'"');
    let at = out.len();
    put(out, &text[..end]);
    out[at + 10] = b'T';
    if with_tz {
        out.push(b'Z');
    }
    out.push(b'"');
    true
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][offset][ BC]` -> `[-]YYYY-MM-DDTHH:MM:SS[.ffffff][Z|offset]`.
#[inline]
fn write_timestamp(out: &mut Vec<u8>, text: &[u8], with_tz: bool) -> Result<(), Fail> {
    if write_common_timestamp(out, text, with_tz) {
        return Ok(());
    }
    write_any_timestamp(out, text, with_tz)
}

/// [`write_timestamp`] for every shape.
fn write_any_timestamp(out: &mut Vec<u8>, text: &[u8], with_tz: bool) -> Result<(), Fail> {
    if text == b"infinity" || text == b"-infinity" {
        write_plain_string(out, text);
        return Ok(());
    }
    let (text, bc) = split_bc(text);
    let DateParts { year, month_day: md, rest } = split_date(text)?;
    let rest = rest.strip_prefix(b" ").ok_or("timestamp has no time part")?;
    let t = time_len(rest)?;
    let (time, offset) = rest.split_at(t);
    if with_tz == offset.is_empty() {
        return Err(if with_tz { "timestamptz has no UTC offset" } else { "timestamp has trailing characters" });
    }
    out.push(b'"');
    write_year(out, year, bc)?;
    out.extend_from_slice(md);
    out.push(b'T');
    out.extend_from_slice(time);
    if with_tz {
        write_offset(out, offset)?;
    }
    out.push(b'"');
    Ok(())
}

/// time stays as printed; timetz gets its offset in ISO 8601 form.
fn write_time(out: &mut Vec<u8>, text: &[u8], with_tz: bool) -> Result<(), Fail> {
    let t = time_len(text)?;
    let (time, offset) = text.split_at(t);
    if with_tz == offset.is_empty() {
        return Err(if with_tz { "timetz has no UTC offset" } else { "time has trailing characters" });
    }
    out.push(b'"');
    out.extend_from_slice(time);
    if with_tz {
        write_offset(out, offset)?;
    }
    out.push(b'"');
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// json / jsonb

/// Container nesting for the JSON checker: one bit per level (1 = object). The first 128
/// levels live inline; deeper documents (legal in Postgres) spill to the heap.
struct Nesting {
    inline: u128,
    spill: Vec<bool>,
    depth: usize,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        if self.depth < 128 {
            let bit = 1u128 << self.depth;
            if object {
                self.inline |= bit;
            } else {
                self.inline &= !bit;
            }
        } else {
            self.spill.push(object);
        }
        self.depth += 1;
    }

    /// Pops a level; `Some(is_object)` of the popped level.
    fn pop(&mut self) -> Option<bool> {
        let object = self.top()?;
        self.depth -= 1;
        if self.depth >= 128 {
            self.spill.pop();
        }
        Some(object)
    }

    fn top(&self) -> Option<bool> {
        match self.depth {
            0 => None,
            d if d <= 128 => Some((self.inline >> (d - 1)) & 1 == 1),
            _ => self.spill.last().copied(),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum JsonState {
    /// A value is required.
    Value,
    /// Just after '[': a value or ']'.
    ValueOrClose,
    /// Just after '{': a key or '}'.
    KeyOrClose,
    /// After ',' in an object.
    Key,
    /// After a key.
    Colon,
    /// After a value inside a container.
    CommaOrClose,
    /// The top-level value is complete.
    Done,
}

/// json/jsonb: validated and embedded as JSON. Whitespace between tokens is dropped: `json`
/// keeps the text as entered, newlines included, and a raw newline would split a JSON-lines
/// record.
fn write_json_text(out: &mut Vec<u8>, text: &[u8]) -> Result<(), Fail> {
    if std::str::from_utf8(text).is_err() {
        return Err("json is not valid UTF-8");
    }
    out.reserve(text.len());
    let mut nest = Nesting { inline: 0, spill: Vec::new(), depth: 0 };
    let mut state = JsonState::Value;
    let n = text.len();
    let mut i = 0;
    loop {
        while i < n && matches!(text[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        let Some(&b) = text.get(i) else { break };
        let after_value = |nest: &Nesting| {
            if nest.depth == 0 {
                JsonState::Done
            } else {
                JsonState::CommaOrClose
            }
        };
        state = match (state, b) {
            (JsonState::CommaOrClose, b',') => {
                out.push(b',');
                i += 1;
                if nest.top() == Some(true) {
                    JsonState::Key
                } else {
                    JsonState::Value
                }
            }
            (JsonState::CommaOrClose | JsonState::KeyOrClose, b'}') | (JsonState::CommaOrClose | JsonState::ValueOrClose, b']') => {
                if nest.pop() != Some(b == b'}') {
                    return Err("json has mismatched brackets");
                }
                out.push(b);
                i += 1;
                after_value(&nest)
            }
            (JsonState::KeyOrClose | JsonState::Key, b'"') => {
                i = copy_json_string(out, text, i)?;
                JsonState::Colon
            }
            (JsonState::Colon, b':') => {
                out.push(b':');
                i += 1;
                JsonState::Value
            }
            (JsonState::Value | JsonState::ValueOrClose, _) => match b {
                b'{' | b'[' => {
                    nest.push(b == b'{');
                    out.push(b);
                    i += 1;
                    if b == b'{' {
                        JsonState::KeyOrClose
                    } else {
                        JsonState::ValueOrClose
                    }
                }
                b'"' => {
                    i = copy_json_string(out, text, i)?;
                    after_value(&nest)
                }
                b't' | b'f' | b'n' => {
                    let word: &[u8] = match b {
                        b't' => b"true",
                        b'f' => b"false",
                        _ => b"null",
                    };
                    if !text[i..].starts_with(word) {
                        return Err("json has an invalid literal");
                    }
                    out.extend_from_slice(word);
                    i += word.len();
                    after_value(&nest)
                }
                _ => {
                    let len = json_number_len(&text[i..]);
                    if len == 0 {
                        return Err("json has an invalid token");
                    }
                    out.extend_from_slice(&text[i..i + len]);
                    i += len;
                    after_value(&nest)
                }
            },
            _ => return Err("json has an unexpected character"),
        };
    }
    if state != JsonState::Done {
        return Err("json ends early");
    }
    Ok(())
}

/// Copies the JSON string starting at `text[start] == '"'`, checking escapes (including
/// surrogate pairs, which Postgres checks too); returns the index after the closing quote.
fn copy_json_string(out: &mut Vec<u8>, text: &[u8], start: usize) -> Result<usize, Fail> {
    let mut i = start + 1;
    loop {
        let &b = text.get(i).ok_or("json string is not terminated")?;
        match b {
            b'"' => break,
            b'\\' => match text.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let unit = hex4(text, i + 2)?;
                    i += 6;
                    if (0xdc00..0xe000).contains(&unit) {
                        return Err("json has a lone low surrogate");
                    }
                    if (0xd800..0xdc00).contains(&unit) {
                        let low = if text.get(i..i + 2) == Some(b"\\u") { hex4(text, i + 2)? } else { 0 };
                        if !(0xdc00..0xe000).contains(&low) {
                            return Err("json has a lone high surrogate");
                        }
                        i += 6;
                    }
                }
                _ => return Err("json string has a bad escape"),
            },
            0..=0x1f => return Err("json string has a control character"),
            _ => i += 1,
        }
    }
    out.extend_from_slice(&text[start..=i]);
    Ok(i + 1)
}

fn hex4(text: &[u8], at: usize) -> Result<u32, Fail> {
    let h = text.get(at..at + 4).ok_or("json \\u escape is short")?;
    h.iter().try_fold(0u32, |acc, &d| match HEX_VALUE[usize::from(d)] {
        0xff => Err("json \\u escape has a non-hex digit"),
        v => Ok((acc << 4) | u32::from(v)),
    })
}

// ---------------------------------------------------------------------------------------------
// Arrays

#[derive(Clone, Copy)]
enum ArrayState {
    /// Just after '{': an element, '{' or '}'.
    Open,
    /// After a delimiter: an element or '{'.
    Delim,
    /// After an element or a '}': a delimiter or '}'.
    Item,
}

/// An array in `array_out` format -> a JSON array (nested for more dimensions).
fn write_array(out: &mut Vec<u8>, elem: u32, delim: u8, text: &[u8]) -> Result<(), Fail> {
    match text.first() {
        // Explicit bounds ("[0:1]={1,2}") are printed only when a lower bound is not 1. A JSON
        // array cannot carry them and dropping them would silently shift every index, so the
        // value is kept whole as a string.
        Some(b'[') => return write_string(out, text),
        Some(b'{') => {}
        _ => return Err("array does not start with '{'"),
    }
    // Unescaped quoted elements; allocated only if an element has a backslash.
    let mut scratch = Vec::new();
    let n = text.len();
    let mut depth = 0usize;
    let mut state = ArrayState::Open;
    let mut i = 0;
    loop {
        let &b = text.get(i).ok_or("array ends early")?;
        match (state, b) {
            (ArrayState::Open | ArrayState::Delim, b'{') => {
                depth += 1;
                if depth > MAX_ARRAY_DIMS {
                    return Err("array has too many dimensions");
                }
                out.push(b'[');
                i += 1;
                state = ArrayState::Open;
            }
            (ArrayState::Open | ArrayState::Item, b'}') => {
                out.push(b']');
                i += 1;
                depth -= 1;
                if depth == 0 {
                    if i != n {
                        return Err("array has trailing characters");
                    }
                    return Ok(());
                }
                state = ArrayState::Item;
            }
            (ArrayState::Item, _) if b == delim => {
                out.push(b',');
                i += 1;
                state = ArrayState::Delim;
            }
            (ArrayState::Open | ArrayState::Delim, b'"') => {
                i += 1;
                let body = &text[i..];
                let end = body.iter().position(|&c| c == b'"' || c == b'\\').ok_or("array element is not terminated")?;
                let value: &[u8] = if body[end] == b'"' {
                    i += end + 1;
                    &body[..end]
                } else {
                    // Backslash escapes: unescape into the scratch buffer.
                    scratch.clear();
                    let mut j = 0;
                    loop {
                        match body.get(j) {
                            None => return Err("array element is not terminated"),
                            Some(b'"') => break,
                            Some(b'\\') => {
                                scratch.push(*body.get(j + 1).ok_or("array element is not terminated")?);
                                j += 2;
                            }
                            Some(&c) => {
                                scratch.push(c);
                                j += 1;
                            }
                        }
                    }
                    i += j + 1;
                    &scratch
                };
                write_scalar(out, elem, value)?;
                state = ArrayState::Item;
            }
            (ArrayState::Open | ArrayState::Delim, _) => {
                let body = &text[i..];
                let end = body.iter().position(|&c| c == delim || c == b'}').ok_or("array ends early")?;
                let value = &body[..end];
                if value.is_empty() || value.iter().any(|&c| matches!(c, b'{' | b'"' | b'\\')) {
                    return Err("array has a malformed element");
                }
                if value.eq_ignore_ascii_case(b"NULL") {
                    out.extend_from_slice(b"null");
                } else {
                    write_scalar(out, elem, value)?;
                }
                i += end;
                state = ArrayState::Item;
            }
            _ => return Err("array is malformed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn js(oid: u32, text: &str) -> Value {
        to_json_value(oid, text.as_bytes()).unwrap_or_else(|e| panic!("{oid} {text:?}: {e}"))
    }

    fn raw(oid: u32, text: &[u8]) -> String {
        let mut out = Vec::new();
        write_json_value(&mut out, oid, text).unwrap_or_else(|e| panic!("{oid} {text:?}: {e}"));
        String::from_utf8(out).unwrap()
    }

    fn err(oid: u32, text: &[u8]) {
        let mut out = b"keep".to_vec();
        let r = write_json_value(&mut out, oid, text);
        assert!(
            matches!(r, Err(DecodeError::Value { type_oid, .. }) if type_oid == oid),
            "{oid} {text:?} should fail, got {r:?} / {:?}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(out, b"keep", "output must be untouched on error");
    }

    #[test]
    fn bool_values() {
        assert_eq!(raw(16, b"t"), "true");
        assert_eq!(raw(16, b"f"), "false");
        for bad in [&b""[..], b"true", b"T", b"tt"] {
            err(16, bad);
        }
    }

    #[test]
    fn integers_are_copied_digit_for_digit() {
        assert_eq!(raw(20, b"9223372036854775807"), "9223372036854775807");
        assert_eq!(raw(20, b"-9223372036854775808"), "-9223372036854775808");
        assert_eq!(raw(23, b"-2147483648"), "-2147483648");
        assert_eq!(raw(23, b"0"), "0");
        assert_eq!(raw(21, b"32767"), "32767");
        assert_eq!(raw(21, b"-32768"), "-32768");
        assert_eq!(raw(26, b"4294967295"), "4294967295");
        err(21, b"32768");
        err(21, b"-32769");
        err(23, b"2147483648");
        err(20, b"9223372036854775808");
        err(20, b"99999999999999999999999");
        err(26, b"-1");
        err(26, b"-0");
        err(26, b"4294967296");
        for bad in [&b""[..], b"-", b"+1", b"01", b"1.0", b"1e3", b" 1", b"1 ", b"0x10", b"--1"] {
            err(23, bad);
        }
    }

    #[test]
    fn floats() {
        assert_eq!(raw(701, b"1.5"), "1.5");
        assert_eq!(raw(701, b"-0"), "-0");
        assert_eq!(raw(701, b"1e+100"), "1e+100");
        assert_eq!(raw(701, b"1.2345e-05"), "1.2345e-05");
        assert_eq!(raw(701, b"0.30000000000000004"), "0.30000000000000004");
        assert_eq!(raw(700, b"3.4028235e+38"), "3.4028235e+38");
        assert_eq!(js(701, "NaN"), json!("NaN"));
        assert_eq!(js(700, "Infinity"), json!("Infinity"));
        assert_eq!(js(701, "-Infinity"), json!("-Infinity"));
        for bad in [&b""[..], b"nan", b"inf", b"1.", b".5", b"1e", b"01", b"1,5", b"+1"] {
            err(701, bad);
        }
        // Past a double's range (found by the fuzz target value_json): readers refuse such a
        // number, so it is an error, not a line they cannot read; underflow is fine.
        assert_eq!(raw(701, b"1e-99999"), "1e-99999");
        assert_eq!(raw(701, b"1.7976931348623157e+308"), "1.7976931348623157e+308");
        err(701, b"1e+79908");
        err(700, b"-2e308");
        err(701, "1".repeat(400).as_bytes());
        err(1022, b"{1e+79908,5e-324,-0}");
    }

    #[test]
    fn numeric_is_an_exact_string() {
        assert_eq!(
            raw(1700, b"123456789012345678901234567890.000000000000000001"),
            "\"123456789012345678901234567890.000000000000000001\""
        );
        assert_eq!(js(1700, "-0.5"), json!("-0.5"));
        assert_eq!(js(1700, "NaN"), json!("NaN"));
        assert_eq!(js(1700, "Infinity"), json!("Infinity"));
        assert_eq!(js(1700, "-Infinity"), json!("-Infinity"));
        for bad in [&b""[..], b"-", b"1.", b".1", b"1e5", b"abc", b"1\"", b"nan", b"1.2.3", b"1..2", b"-.5", b"--1", b"1-", b"."] {
            err(1700, bad);
        }
    }

    #[test]
    fn text_types_are_escaped_strings() {
        for oid in [25, 1043, 1042, 19, 18, 999_999] {
            assert_eq!(js(oid, "plain"), json!("plain"));
        }
        assert_eq!(raw(25, b"a\"b\\c\nd\te\r\x08\x0c\x01\x1f"), r#""a\"b\\c\nd\te\r\b\f\u0001\u001f""#);
        assert_eq!(js(25, "ünïcödé ✓ 𝄞"), json!("ünïcödé ✓ 𝄞"));
        assert_eq!(raw(25, b""), "\"\"");
        assert_eq!(raw(25, b"/\x7f"), "\"/\x7f\"");
        err(25, b"\xff");
        err(1043, b"ok\xc3");
        err(424242, b"\xed\xa0\x80");
    }

    #[test]
    fn string_typed_builtins() {
        let cases: &[(u32, &str)] = &[
            (142, "<a>b</a>"),
            (790, "$1,234.56"),
            (869, "192.168.0.1/24"),
            (650, "10.0.0.0/8"),
            (829, "08:00:2b:01:02:03"),
            (774, "08:00:2b:01:02:03:04:05"),
            (1560, "101"),
            (1562, "10101"),
            (3614, "'a' 'b':2"),
            (3615, "'a' & 'b'"),
            (600, "(1,2)"),
            (628, "{1,2,3}"),
            (601, "[(1,2),(3,4)]"),
            (603, "(3,4),(1,2)"),
            (602, "((1,2),(3,4))"),
            (604, "((1,2),(3,4),(5,6))"),
            (718, "<(1,2),3>"),
            (3904, "[1,5)"),
            (4451, "{[1,5), [7,9)}"),
            (3220, "16/B374D848"),
            (1186, "P1Y2M3DT4H5M6S"),
            (1186, "PT-0.5S"),
            (5069, "18446744073709551615"),
            (28, "4294967295"),
        ];
        for &(oid, text) in cases {
            assert_eq!(js(oid, text), json!(text), "oid {oid}");
        }
    }

    #[test]
    fn uuid() {
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(js(2950, u), json!(u));
        err(2950, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1");
        err(2950, b"a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11");
        err(2950, b"g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    }

    #[test]
    fn json_is_embedded() {
        assert_eq!(js(3802, r#"{"a": 1, "b": [true, null, "x"]}"#), json!({"a": 1, "b": [true, null, "x"]}));
        assert_eq!(raw(3802, br#"{"a": 1, "b": [1, 2]}"#), r#"{"a":1,"b":[1,2]}"#);
        assert_eq!(raw(114, b" {\n  \"a\" :\t\"x y\\n\"\r\n} "), r#"{"a":"x y\n"}"#);
        assert_eq!(raw(114, b"12.5e-3"), "12.5e-3");
        assert_eq!(raw(114, b"\"s\""), "\"s\"");
        assert_eq!(raw(114, b"[]"), "[]");
        assert_eq!(raw(114, b"{}"), "{}");
        assert_eq!(raw(114, br#""\ud83d\ude00 \u0000""#), r#""\ud83d\ude00 \u0000""#);
        assert_eq!(js(114, r#"[[[[{"k":[-0.0,1E5]}]]]]"#), json!([[[[{"k": [-0.0, 1e5]}]]]]));
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert_eq!(raw(114, deep.as_bytes()), deep);
        let bad: &[&[u8]] = &[
            b"",
            b" ",
            b"{",
            b"[1,]",
            b"[1 2]",
            b"{\"a\" 1}",
            b"{\"a\":}",
            b"{1:2}",
            b"[}",
            b"{]",
            b"tru",
            b"truex",
            b"nul",
            b"01",
            b"1.",
            b"-",
            b"1 2",
            b"\"a",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud800\\u0041\"",
            b"\"a\nb\"",
            b"NaN",
            b"\"\xff\"",
            b"[1]]",
            b"{\"a\":1,}",
            b"1}",
        ];
        for b in bad {
            err(114, b);
            err(3802, b);
        }
    }

    #[test]
    fn bytea_to_base64() {
        assert_eq!(js(17, "\\x"), json!(""));
        assert_eq!(js(17, "\\x0a0b"), json!("Cgs="));
        assert_eq!(js(17, "\\xDEADbeef"), json!("3q2+7w=="));
        assert_eq!(js(17, "\\x000102"), json!("AAEC"));
        // Longer than one chunk, and not a multiple of 3 in total.
        let bytes: Vec<u8> = (0..2000u32).map(|i| (i * 7) as u8).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let expect = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(js(17, &format!("\\x{hex}")), json!(expect));
        for bad in [&b""[..], b"0a0b", b"\\x0", b"\\x0g", b"\\xzz", b"\\X0a", b"\\\\x0a", b"\\x0a "] {
            err(17, bad);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(js(1082, "2026-11-22"), json!("2026-11-22"));
        assert_eq!(js(1082, "infinity"), json!("infinity"));
        assert_eq!(js(1082, "-infinity"), json!("-infinity"));
        assert_eq!(js(1082, "0044-03-15 BC"), json!("-0043-03-15"));
        assert_eq!(js(1082, "0001-01-01 BC"), json!("0000-01-01"));
        assert_eq!(js(1082, "0002-01-01 BC"), json!("-0001-01-01"));
        assert_eq!(js(1082, "4714-11-24 BC"), json!("-4713-11-24"));
        assert_eq!(js(1082, "10000-01-01 BC"), json!("-9999-01-01"));
        assert_eq!(js(1082, "10001-01-01 BC"), json!("-10000-01-01"));
        assert_eq!(js(1082, "5874897-12-31"), json!("5874897-12-31"));
        for bad in [
            &b""[..],
            b"2026-11",
            b"26-11-22",
            b"2026/11/22",
            b"2026-1-22",
            b"2026-11-22 ",
            b"0000-01-01 BC",
            b"2026-11-22 AD",
            b"Infinity",
        ] {
            err(1082, bad);
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(js(1114, "2026-11-22 16:33:20.123456"), json!("2026-11-22T16:33:20.123456"));
        assert_eq!(js(1114, "2026-11-22 16:33:20"), json!("2026-11-22T16:33:20"));
        assert_eq!(js(1114, "0044-03-15 12:00:00 BC"), json!("-0043-03-15T12:00:00"));
        assert_eq!(js(1114, "infinity"), json!("infinity"));
        assert_eq!(js(1114, "-infinity"), json!("-infinity"));
        assert_eq!(js(1184, "2026-11-22 16:33:20.123456+00"), json!("2026-11-22T16:33:20.123456Z"));
        assert_eq!(js(1184, "2026-11-22 16:33:20+05:30"), json!("2026-11-22T16:33:20+05:30"));
        assert_eq!(js(1184, "2026-11-22 16:33:20+05"), json!("2026-11-22T16:33:20+05:00"));
        assert_eq!(js(1184, "2026-11-22 16:33:20-03"), json!("2026-11-22T16:33:20-03:00"));
        assert_eq!(js(1184, "1900-01-01 00:00:00+05:30:15"), json!("1900-01-01T00:00:00+05:30:15"));
        assert_eq!(js(1184, "0044-03-15 12:00:00+00 BC"), json!("-0043-03-15T12:00:00Z"));
        assert_eq!(js(1184, "-infinity"), json!("-infinity"));
        for bad in [
            &b"2026-11-22T16:33:20"[..],
            b"2026-11-22",
            b"2026-11-22 16:33",
            b"2026-11-22 16:33:20.",
            b"2026-11-22 16:33:20+00",
            b"2026-11-22 16:33:20 BC BC",
            b"2026-11-22 1a:33:20",
        ] {
            err(1114, bad);
        }
        for bad in [
            &b"2026-11-22 16:33:20"[..],
            b"2026-11-22 16:33:20+5",
            b"2026-11-22 16:33:20+05:3",
            b"2026-11-22 16:33:20 UTC",
            b"2026-11-22 16:33:20+05:30:15:00",
            b"2026-11-22 16:33:20+0a",
        ] {
            err(1184, bad);
        }
    }

    /// The one-copy path writes what the general one does, and leaves every other shape to it.
    #[test]
    fn the_common_timestamp_path_agrees_with_the_general_one() {
        let texts = [
            "2026-11-22 16:33:20+00",
            "2026-11-22 16:33:20.5+00",
            "2026-11-22 16:33:20.123456+00",
            "0001-01-01 00:00:00+00",
            "2026-11-22 16:33:20",
            "2026-11-22 16:33:20.000001",
            "2026-11-22 16:33:20+01",
            "2026-11-22 16:33:20-00",
            "2026-11-22 16:33:20+00 BC",
            "2026-11-22 16:33:20 BC",
            "12026-11-22 16:33:20+00",
            "2026-11-22 16:33:20.+00",
            "2026-11-22 16:33:2x+00",
            "2026-11-22T16:33:20+00",
            "2026/11/22 16:33:20+00",
            "2026-11-22 16:33:20+0",
            "2026-11-22 16:33:20+000",
            "infinity",
        ];
        for text in texts {
            for with_tz in [true, false] {
                let (mut fast, mut general) = (Vec::new(), Vec::new());
                let took = write_common_timestamp(&mut fast, text.as_bytes(), with_tz);
                let ok = write_any_timestamp(&mut general, text.as_bytes(), with_tz).is_ok();
                if took {
                    assert!(ok, "{text:?} {with_tz}: the general path refuses it");
                    assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&general), "{text:?} {with_tz}");
                } else {
                    assert!(fast.is_empty(), "{text:?} {with_tz}: wrote before giving up");
                }
            }
        }
        // The shape bench_rows and every UTC session print takes the one-copy path.
        assert!(write_common_timestamp(&mut Vec::new(), b"2026-11-22 16:33:20.123456+00", true));
        assert!(write_common_timestamp(&mut Vec::new(), b"2026-11-22 16:33:20", false));
    }

    #[test]
    fn the_numeric_word_check_agrees_with_the_byte_rule() {
        for len in 0..20usize {
            for at in 0..=len {
                for other in [b'.', b'/', b':', b'-', b'e', 0x80, 0xae, 0xb0, 0x2e, 0x7f, 0x00] {
                    for dot_at in [None, Some(0), Some(len / 2), Some(len.saturating_sub(1))] {
                        let mut text = vec![b'5'; len];
                        if let Some(d) = dot_at.filter(|&d| d < len) {
                            text[d] = b'.';
                        }
                        if at < len {
                            text[at] = other;
                        }
                        let want = text
                            .iter()
                            .all(|b| b.is_ascii_digit() || *b == b'.')
                            .then(|| text.iter().filter(|&&b| b == b'.').count() as u32);
                        assert_eq!(digits_and_dots(&text), want, "{text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn short_copies_append_exactly_the_bytes() {
        let src: Vec<u8> = (0..40u8).collect();
        for n in 0..=40 {
            let mut out = b"ab".to_vec();
            put(&mut out, &src[..n]);
            assert_eq!(&out[..2], b"ab");
            assert_eq!(&out[2..], &src[..n], "{n}");
        }
    }

    #[test]
    fn digit_checks_agree_with_the_byte_rule() {
        for len in 0..24 {
            for bad_at in 0..=len {
                for bad in [b'/', b':', b'a', b' ', 0x80, 0xb0, 0x3a, 0x3f] {
                    let mut text = vec![b'7'; len];
                    if bad_at < len {
                        text[bad_at] = bad;
                    }
                    assert_eq!(all_digits(&text), text.iter().all(u8::is_ascii_digit), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn times() {
        assert_eq!(js(1083, "16:33:20"), json!("16:33:20"));
        assert_eq!(js(1083, "16:33:20.5"), json!("16:33:20.5"));
        assert_eq!(js(1083, "24:00:00"), json!("24:00:00"));
        assert_eq!(js(1266, "16:33:20+00"), json!("16:33:20Z"));
        assert_eq!(js(1266, "16:33:20.123-07"), json!("16:33:20.123-07:00"));
        assert_eq!(js(1266, "16:33:20+05:45"), json!("16:33:20+05:45"));
        err(1083, b"16:33");
        err(1083, b"16:33:20+00");
        err(1266, b"16:33:20");
        err(1266, b"16:33:20Z");
    }

    #[test]
    fn arrays() {
        assert_eq!(js(1007, "{1,2,3}"), json!([1, 2, 3]));
        assert_eq!(js(1007, "{}"), json!([]));
        assert_eq!(js(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(js(1007, "{{{1},{2}},{{3},{NULL}}}"), json!([[[1], [2]], [[3], [null]]]));
        assert_eq!(js(1016, "{9223372036854775807,NULL,null}"), json!([9223372036854775807_i64, null, null]));
        assert_eq!(js(1000, "{t,f,NULL}"), json!([true, false, null]));
        assert_eq!(js(1009, r#"{"a,b","c\"d",NULL,"NULL","",ef}"#), json!(["a,b", "c\"d", null, "NULL", "", "ef"]));
        assert_eq!(js(1009, r#"{"back\\slash","{}"," sp "}"#), json!(["back\\slash", "{}", " sp "]));
        assert_eq!(js(1015, "{x}"), json!(["x"]));
        assert_eq!(js(1014, r#"{"a  "}"#), json!(["a  "]));
        assert_eq!(js(1231, "{1.5,NaN}"), json!(["1.5", "NaN"]));
        assert_eq!(js(1022, "{1.5,NaN,-Infinity,1e+100}"), json!([1.5, "NaN", "-Infinity", 1e100]));
        assert_eq!(js(2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"), json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]));
        assert_eq!(js(3807, r#"{"{\"a\": 1}","[1, 2]",NULL}"#), json!([{"a": 1}, [1, 2], null]));
        assert_eq!(js(199, r#"{"\"s\"",3}"#), json!(["s", 3]));
        assert_eq!(js(1001, r#"{"\\x0a0b",NULL}"#), json!(["Cgs=", null]));
        assert_eq!(js(1182, r#"{2026-11-22,"0044-03-15 BC",infinity}"#), json!(["2026-11-22", "-0043-03-15", "infinity"]));
        assert_eq!(js(1115, r#"{"2026-11-22 16:33:20"}"#), json!(["2026-11-22T16:33:20"]));
        assert_eq!(
            js(1185, r#"{"2026-11-22 16:33:20+00","2026-11-22 16:33:20+05:30"}"#),
            json!(["2026-11-22T16:33:20Z", "2026-11-22T16:33:20+05:30"])
        );
        assert_eq!(js(1183, "{16:33:20}"), json!(["16:33:20"]));
        assert_eq!(js(1270, "{16:33:20+00}"), json!(["16:33:20Z"]));
        assert_eq!(js(1187, "{P1Y,PT1S}"), json!(["P1Y", "PT1S"]));
        assert_eq!(js(1041, "{192.168.0.1/24,::1}"), json!(["192.168.0.1/24", "::1"]));
        assert_eq!(js(651, "{10.0.0.0/8}"), json!(["10.0.0.0/8"]));
        assert_eq!(js(1040, "{08:00:2b:01:02:03}"), json!(["08:00:2b:01:02:03"]));
        assert_eq!(js(1020, "{(1,1),(0,0);(2,2),(1,1)}"), json!(["(1,1),(0,0)", "(2,2),(1,1)"]));
        assert_eq!(js(1017, r#"{"(1,2)","(3,4)"}"#), json!(["(1,2)", "(3,4)"]));
        assert_eq!(js(1561, "{101,010}"), json!(["101", "010"]));
        assert_eq!(js(1563, "{1}"), json!(["1"]));
        assert_eq!(js(1028, "{1,4294967295}"), json!([1, 4294967295_u32]));
        assert_eq!(js(1003, "{pg_catalog}"), json!(["pg_catalog"]));
        assert_eq!(js(143, r#"{"<a x=\"1\"/>"}"#), json!(["<a x=\"1\"/>"]));
        assert_eq!(js(791, r#"{"$1.00"}"#), json!(["$1.00"]));
        assert_eq!(js(3643, r#"{"'a' 'b'"}"#), json!(["'a' 'b'"]));
        assert_eq!(js(3905, r#"{"[1,5)",empty}"#), json!(["[1,5)", "empty"]));
        assert_eq!(js(1005, "{-32768,32767}"), json!([-32768, 32767]));
        assert_eq!(js(1021, "{1.5}"), json!([1.5]));
        assert_eq!(js(1002, r#"{a,"\\"}"#), json!(["a", "\\"]));
        // Explicit lower bounds cannot be represented: the text is kept.
        assert_eq!(js(1007, "[0:1]={1,2}"), json!("[0:1]={1,2}"));
        assert_eq!(js(1007, "[1:1][0:1]={{1,2}}"), json!("[1:1][0:1]={{1,2}}"));
        // Array-looking values of non-array types stay strings.
        assert_eq!(js(25, "{1,2}"), json!("{1,2}"));
        assert_eq!(js(22, "1 2"), json!("1 2"));
    }

    #[test]
    fn malformed_arrays() {
        let bad: &[&[u8]] = &[
            b"",
            b"1,2",
            b"{",
            b"{1",
            b"{1,",
            b"{1,}",
            b"{,1}",
            b"{1}}",
            b"{1}x",
            b"{\"a}",
            b"{\"a\\",
            b"{a\"b}",
            b"{a\\b}",
            b"{1{2}}",
            b"{{1}2}",
            b"{{{{{{{1}}}}}}}",
            b"}",
        ];
        for b in bad {
            err(1009, b);
        }
        err(1007, b"{1,x}");
        err(1007, b"{\"NULL\"}");
        err(1000, b"{true}");
        err(1001, b"{\\x0}");
        err(1009, b"{\"\xff\"}");
        // Six dimensions are allowed.
        assert_eq!(js(1007, "{{{{{{1}}}}}}"), json!([[[[[[1]]]]]]));
    }

    #[test]
    fn every_array_maps_to_a_scalar_element() {
        for array in 0..20_000 {
            if let Some((elem, delim)) = array_element(array) {
                assert!(array_element(elem).is_none(), "{array} -> {elem}");
                assert!(delim == b',' || (array == 1020 && delim == b';'));
            }
        }
        let count = (0..20_000).filter(|&o| array_element(o).is_some()).count();
        assert_eq!(count, 82, "pg_type.dat (PG15) has 81 array_type_oid entries plus _record");
    }

    #[test]
    fn appends_to_existing_output() {
        let mut out = b"[".to_vec();
        write_json_value(&mut out, 23, b"1").unwrap();
        out.push(b',');
        write_json_value(&mut out, 25, b"x").unwrap();
        out.push(b']');
        assert_eq!(out, b"[1,\"x\"]");
    }

    /// A schema like `CREATE TYPE mood AS ENUM ...; CREATE DOMAIN posint AS int4; CREATE TYPE
    /// pair AS (...)` with their array types, as `pg_type` describes them.
    fn user_types(oid: u32) -> Option<UserType> {
        let t = |typtype, category, elem, base, delim| Some(UserType { typtype, category, elem, base, delim });
        match oid {
            16_400 => t(b'e', b'E', 0, 0, b','),      // mood
            16_401 => t(b'b', b'A', 16_400, 0, b','), // _mood
            16_402 => t(b'd', b'N', 0, 23, b','),     // posint (int4)
            16_403 => t(b'b', b'A', 16_402, 0, b','), // _posint
            16_404 => t(b'c', b'C', 0, 0, b','),      // pair
            16_405 => t(b'b', b'A', 16_404, 0, b','), // _pair
            16_406 => t(b'd', b'N', 0, 16_402, b','), // domain over posint
            16_407 => t(b'b', b'A', 16_406, 0, b','), // its array
            16_408 => t(b'd', b'A', 0, 1009, b','),   // domain over text[]
            16_409 => t(b'd', b'D', 0, 603, b';'),    // domain over box
            16_410 => t(b'b', b'A', 16_409, 0, b';'), // its array
            16_411 => t(b'b', b'U', 0, 0, b'|'),      // an extension type with its own delimiter
            16_412 => t(b'b', b'A', 16_411, 0, b'|'), // its array
            16_413 => t(b'd', b'N', 0, 16_413, b','), // a (corrupt) domain over itself
            _ => None,
        }
    }

    fn rule(oid: u32) -> u32 {
        value_rule(oid, &user_types)
    }

    #[test]
    fn user_defined_types_take_a_built_in_rule() {
        assert_eq!(rule(23), 23, "built-in types keep their own rule");
        assert_eq!(rule(1007), 1007);
        assert_eq!(rule(16_400), 25, "enum: string");
        assert_eq!(rule(16_401), 1009, "enum array: array of strings");
        assert_eq!(rule(16_402), 23, "domain: its base type's rule");
        assert_eq!(rule(16_403), 1007, "domain array: the base type's array");
        assert_eq!(rule(16_404), 25, "composite: string");
        assert_eq!(rule(16_405), 1009, "composite array: array of strings");
        assert_eq!(rule(16_406), 23, "domain over a domain");
        assert_eq!(rule(16_407), 1007);
        assert_eq!(rule(16_408), 1009, "domain over an array");
        assert_eq!(rule(16_410), 1020, "box elements keep their ';' delimiter");
        assert_eq!(rule(16_412), 25, "an array delimited by something else stays a string");
        assert_eq!(rule(16_413), 25, "nesting is bounded");
        assert_eq!(rule(99_999), 25, "unknown types are strings");
    }

    #[test]
    fn arrays_of_user_defined_types_become_json_arrays() {
        assert_eq!(js(rule(16_401), r#"{happy,"very sad",NULL}"#), json!(["happy", "very sad", null]));
        assert_eq!(js(rule(16_403), "{{1,2},{3,NULL}}"), json!([[1, 2], [3, null]]));
        assert_eq!(js(rule(16_405), r#"{"(1,\"a b\")","(2,)"}"#), json!(["(1,\"a b\")", "(2,)"]));
        assert_eq!(js(rule(16_402), "42"), json!(42));
        assert_eq!(js(rule(16_400), "happy"), json!("happy"));
    }

    #[test]
    fn the_word_at_a_time_plain_test_agrees_with_the_byte_rule() {
        let plain = |b: u8| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\';
        // Every pair of bytes, in one word and across the tail, so a borrow from one byte into
        // the next cannot hide or invent a match.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let word = [b'x', a, b, b'x', b'x', b'x', b'x', b'x', b'x', a, b];
                assert_eq!(is_plain_ascii(&word), plain(a) && plain(b), "{a:#04x} {b:#04x}");
                let mut out = Vec::new();
                if write_string(&mut out, &word).is_ok() {
                    let text = std::str::from_utf8(&word).expect("accepted text is UTF-8");
                    assert_eq!(out, serde_json::to_vec(text).expect("serde_json"), "{a:#04x} {b:#04x}");
                }
            }
        }
    }
}
