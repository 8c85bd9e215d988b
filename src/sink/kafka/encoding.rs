//! Column values in the encodings `[sinks.kafka]` selects (docs/kafka.md "Values"): each
//! column's [`Kind`] follows from its type, type modifier and the encodings, and decides both
//! how its values are written and the Connect schema that describes them (`schema.rs`).
//! Types no encoding changes keep walcast's JSON value rules.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::decimal::{bits_bytes, money_text, numeric_typmod, point_wkb, point_xy, Decimal};
use super::temporal::{date_days, time_micros, timestamp_micros, timetz_utc, Interval, Point};
use crate::config::{DecimalHandling, IntervalHandling, JsonHandling, TimePrecision, ValueEncoding};
use crate::decode::{array_element, binary, write_json_str, write_json_value, Datum, DecodeError, Relation, Tuple};

/// Built-in type OIDs whose encoding can differ from walcast's.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const POINT: u32 = 600;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const MONEY: u32 = 790;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const BIT: u32 = 1560;
    pub const VARBIT: u32 = 1562;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// What Debezium documents for +infinity / -infinity timestamps (the JDBC driver's stand-ins).
pub(super) const TIMESTAMP_POS_INFINITY: i64 = 9_223_372_036_825_200_000;
/// See [`TIMESTAMP_POS_INFINITY`].
pub(super) const TIMESTAMP_NEG_INFINITY: i64 = -9_223_372_036_832_400_000;

/// Debezium's `money.fraction.digits` default.
const MONEY_SCALE: i32 = 2;

/// How one column's values are written, and which Connect schema describes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// walcast's value rule for the type; Connect type and semantic name.
    Plain { ty: &'static str, name: Option<&'static str> },
    /// Connect `Decimal` with this scale (and precision, when declared).
    Decimal { scale: i32, precision: Option<i32> },
    /// `io.debezium.data.VariableScaleDecimal`: `{scale, value}`.
    VariableDecimal,
    /// A decimal as a JSON number (`decimal.handling.mode=double`).
    Double,
    /// `money` in one of the decimal encodings (`Decimal`, `Double` or `DecimalString`).
    Money(DecimalHandling),
    /// Days since 1970, int32.
    DateDays { name: &'static str },
    /// Milliseconds of the day, int32.
    TimeMillis { name: &'static str },
    /// `io.debezium.time.MicroTime`.
    TimeMicros,
    /// Milliseconds since 1970, int64.
    TimestampMillis { name: &'static str },
    /// `io.debezium.time.MicroTimestamp`.
    TimestampMicros,
    /// `io.debezium.time.ZonedTime` in UTC.
    TimetzUtc,
    /// `io.debezium.time.MicroDuration`.
    IntervalMicros,
    /// `io.debezium.time.Interval`, every part written.
    IntervalString,
    /// `io.debezium.data.Json`: the JSON text as a string.
    JsonString,
    /// `bit(1)` as a boolean.
    BitBool,
    /// `io.debezium.data.Bits` with its length.
    Bits { length: i32 },
    /// `io.debezium.data.geometry.Point`.
    Point,
}

/// The kind of a scalar (non-array) type.
pub(super) fn kind(type_oid: u32, typmod: i32, enc: &ValueEncoding) -> Kind {
    let plain = |ty, name| Kind::Plain { ty, name };
    let deb = enc.debezium_types;
    let precision = |typmod: i32| if typmod < 0 { 6 } else { typmod };
    match type_oid {
        oid::BOOL => plain("boolean", None),
        oid::INT2 => plain("int16", None),
        oid::INT4 => plain("int32", None),
        oid::INT8 | oid::OID => plain("int64", None),
        oid::FLOAT4 => plain("float", None),
        oid::FLOAT8 => plain("double", None),
        oid::BYTEA => plain("bytes", None),
        oid::UUID => plain("string", Some("io.debezium.data.Uuid")),
        oid::XML => plain("string", Some("io.debezium.data.Xml")),
        oid::NUMERIC => match enc.decimal {
            DecimalHandling::Precise => match numeric_typmod(typmod) {
                Some((p, s)) => Kind::Decimal { scale: s, precision: Some(p) },
                None => Kind::VariableDecimal,
            },
            DecimalHandling::Double => Kind::Double,
            DecimalHandling::String => plain("string", None),
        },
        oid::MONEY if deb => Kind::Money(enc.decimal),
        oid::JSON | oid::JSONB => match enc.json {
            JsonHandling::String => Kind::JsonString,
            JsonHandling::Embedded => plain("string", Some("io.debezium.data.Json")),
        },
        oid::DATE => match enc.time {
            TimePrecision::Iso => plain("string", Some("io.debezium.time.IsoDate")),
            TimePrecision::Connect => Kind::DateDays { name: "org.apache.kafka.connect.data.Date" },
            _ => Kind::DateDays { name: "io.debezium.time.Date" },
        },
        oid::TIME => match enc.time {
            TimePrecision::Iso => plain("string", Some("io.debezium.time.IsoTime")),
            TimePrecision::Connect => Kind::TimeMillis { name: "org.apache.kafka.connect.data.Time" },
            TimePrecision::Adaptive if precision(typmod) <= 3 => Kind::TimeMillis { name: "io.debezium.time.Time" },
            _ => Kind::TimeMicros,
        },
        oid::TIMESTAMP => match enc.time {
            TimePrecision::Iso => plain("string", Some("io.debezium.time.IsoTimestamp")),
            TimePrecision::Connect => Kind::TimestampMillis { name: "org.apache.kafka.connect.data.Timestamp" },
            _ if precision(typmod) <= 3 => Kind::TimestampMillis { name: "io.debezium.time.Timestamp" },
            _ => Kind::TimestampMicros,
        },
        oid::TIMESTAMPTZ => plain("string", Some("io.debezium.time.ZonedTimestamp")),
        oid::TIMETZ if deb => Kind::TimetzUtc,
        oid::INTERVAL => match enc.interval {
            IntervalHandling::Numeric => Kind::IntervalMicros,
            IntervalHandling::String if deb => Kind::IntervalString,
            IntervalHandling::String => plain("string", Some("io.debezium.time.Interval")),
        },
        oid::BIT if deb && typmod == 1 => Kind::BitBool,
        oid::BIT | oid::VARBIT if deb => Kind::Bits { length: if typmod < 0 { i32::MAX } else { typmod } },
        oid::POINT if deb => Kind::Point,
        _ => plain("string", None),
    }
}

/// Writes values (and rows) in one set of encodings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Encoder {
    /// The encodings.
    pub enc: ValueEncoding,
    /// Connect schemas are on: a multi-dimensional array is written flat (a schema has no
    /// dimension count) and explicit array bounds are dropped.
    pub flat_arrays: bool,
}

impl Encoder {
    /// Append `{"col": value, ...}` over the columns `include` selects; an unchanged TOASTed
    /// value is written as `placeholder`.
    pub(super) fn write_row(
        &self,
        out: &mut Vec<u8>,
        rel: &Relation,
        values: &Tuple,
        include: impl Fn(usize) -> bool,
        placeholder: &str,
    ) -> Result<(), DecodeError> {
        if values.len() != rel.columns.len() {
            return Err(DecodeError::ColumnCount { relation: rel.qualified_name(), expected: rel.columns.len(), got: values.len() });
        }
        out.push(b'{');
        let mut first = true;
        for (i, (col, datum)) in rel.columns.iter().zip(values).enumerate() {
            if !include(i) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_json_str(out, &col.name);
            out.push(b':');
            match datum {
                Datum::Null => out.extend_from_slice(b"null"),
                Datum::Unchanged => write_json_str(out, placeholder),
                Datum::Text(text) => self.write_value(out, col.type_oid, col.type_modifier, text)?,
                Datum::Binary(bytes) if binary::is_send_format(col.type_oid) => {
                    binary::with_text(col.type_oid, bytes, |text| self.write_value(out, col.type_oid, col.type_modifier, text))
                        .map_err(|reason| DecodeError::Value { type_oid: col.type_oid, reason })??
                }
                Datum::Binary(bytes) => write_base64(out, bytes),
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// Append one text-format value of a column.
    pub(super) fn write_value(&self, out: &mut Vec<u8>, type_oid: u32, typmod: i32, text: &[u8]) -> Result<(), DecodeError> {
        let start = out.len();
        let result = match array_element(type_oid) {
            Some((elem, delim)) => {
                let k = kind(elem, typmod, &self.enc);
                if !self.flat_arrays && matches!(k, Kind::Plain { .. }) {
                    // walcast's own array rule, nested arrays and bounds included.
                    return write_json_value(out, type_oid, text);
                }
                self.write_array(out, elem, k, delim, text)
            }
            None => write_scalar(out, type_oid, kind(type_oid, typmod, &self.enc), text),
        };
        result.map_err(|reason| {
            out.truncate(start);
            DecodeError::Value { type_oid, reason: reason.to_string() }
        })
    }

    /// A Postgres array literal, elements written by `k`: nested JSON arrays, or one flat array
    /// when `flat_arrays`.
    fn write_array(&self, out: &mut Vec<u8>, elem: u32, k: Kind, delim: u8, text: &[u8]) -> Result<(), String> {
        // Explicit bounds (`[0:1]={7,8}`) come first.
        let body = match text.first() {
            Some(b'[') => text.iter().position(|&b| b == b'=').map(|i| &text[i + 1..]).ok_or("array bounds without '='")?,
            _ => text,
        };
        if !self.flat_arrays && body.len() != text.len() {
            // walcast keeps such an array whole, as a string.
            write_json_str(out, std::str::from_utf8(text).map_err(|_| "array is not UTF-8")?);
            return Ok(());
        }
        let mut depth = 0usize;
        let mut need_comma = false;
        let mut i = 0;
        let mut item = Vec::new();
        while i < body.len() {
            let b = body[i];
            match b {
                b'{' => {
                    if depth == 0 || !self.flat_arrays {
                        if need_comma {
                            out.push(b',');
                        }
                        out.push(b'[');
                        need_comma = false;
                    }
                    depth += 1;
                    i += 1;
                }
                b'}' => {
                    depth = depth.checked_sub(1).ok_or("array has an unmatched '}'")?;
                    if depth == 0 || !self.flat_arrays {
                        out.push(b']');
                        need_comma = true;
                    }
                    i += 1;
                }
                _ if b == delim || b.is_ascii_whitespace() => i += 1,
                _ => {
                    if depth == 0 {
                        return Err("array element outside braces".into());
                    }
                    item.clear();
                    let quoted = b == b'"';
                    if quoted {
                        i += 1;
                        loop {
                            match body.get(i) {
                                None => return Err("array element is not terminated".into()),
                                Some(b'"') => break,
                                Some(b'\\') => {
                                    item.push(*body.get(i + 1).ok_or("array ends in a backslash")?);
                                    i += 2;
                                }
                                Some(&c) => {
                                    item.push(c);
                                    i += 1;
                                }
                            }
                        }
                        i += 1;
                    } else {
                        let end = body[i..].iter().position(|&c| c == delim || c == b'}').map_or(body.len(), |p| i + p);
                        item.extend_from_slice(body[i..end].trim_ascii_end());
                        i = end;
                    }
                    if need_comma {
                        out.push(b',');
                    }
                    need_comma = true;
                    if !quoted && item == b"NULL" {
                        out.extend_from_slice(b"null");
                    } else {
                        write_scalar(out, elem, k, &item)?;
                    }
                }
            }
        }
        if depth != 0 {
            return Err("array has an unmatched '{'".into());
        }
        Ok(())
    }
}

fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(BASE64.encode(bytes).as_bytes());
    out.push(b'"');
}

fn write_num(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = write!(out, "{v}");
}

/// A decimal as Connect `Decimal` bytes at `scale`; null for NaN and infinities (they have no
/// such form, as in Debezium's `precise` mode).
fn write_decimal_bytes(out: &mut Vec<u8>, text: &[u8], scale: i32) -> Result<(), String> {
    match Decimal::parse(text) {
        Some(d) => {
            let d = d.rescale(scale).ok_or("numeric value has more digits after the point than its scale")?;
            write_base64(out, &d.unscaled_bytes());
        }
        None if is_special_number(text) => out.extend_from_slice(b"null"),
        None => return Err("not a decimal number".into()),
    }
    Ok(())
}

fn is_special_number(text: &[u8]) -> bool {
    matches!(text, b"NaN" | b"Infinity" | b"-Infinity")
}

/// A decimal as an IEEE double; NaN and infinities as the strings Jackson writes for them.
fn write_double(out: &mut Vec<u8>, text: &[u8]) -> Result<(), String> {
    if is_special_number(text) {
        out.push(b'"');
        out.extend_from_slice(text);
        out.push(b'"');
        return Ok(());
    }
    let v: f64 = std::str::from_utf8(text).ok().and_then(|s| s.parse().ok()).ok_or("not a decimal number")?;
    serde_json::to_writer(&mut *out, &v).map_err(|e| e.to_string())
}

fn utf8(text: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(text).map_err(|_| "value is not UTF-8".to_string())
}

fn write_scalar(out: &mut Vec<u8>, type_oid: u32, k: Kind, text: &[u8]) -> Result<(), String> {
    match k {
        Kind::Plain { .. } => write_json_value(out, type_oid, text).map_err(|e| e.to_string())?,
        Kind::Decimal { scale, .. } => write_decimal_bytes(out, text, scale)?,
        Kind::VariableDecimal => match Decimal::parse(text) {
            Some(d) => {
                let scale = d.scale;
                out.extend_from_slice(b"{\"scale\":");
                write_num(out, scale);
                out.extend_from_slice(b",\"value\":");
                write_base64(out, &d.unscaled_bytes());
                out.push(b'}');
            }
            None if is_special_number(text) => out.extend_from_slice(b"null"),
            None => return Err("not a decimal number".into()),
        },
        Kind::Double => write_double(out, text)?,
        Kind::Money(mode) => {
            let dec = money_text(text).ok_or("money value has no digits")?;
            match mode {
                DecimalHandling::Precise => write_decimal_bytes(out, dec.as_bytes(), MONEY_SCALE)?,
                DecimalHandling::Double => write_double(out, dec.as_bytes())?,
                DecimalHandling::String => write_json_str(out, &dec),
            }
        }
        Kind::DateDays { .. } => match date_days(text).ok_or("not a date")? {
            Point::Value(d) => write_num(out, i32::try_from(d).map_err(|_| "date out of range")?),
            Point::Infinity => write_num(out, i32::MAX),
            Point::NegInfinity => write_num(out, i32::MIN),
        },
        Kind::TimeMillis { .. } => write_num(out, time_micros(text).ok_or("not a time")? / 1000),
        Kind::TimeMicros => write_num(out, time_micros(text).ok_or("not a time")?),
        Kind::TimestampMillis { .. } | Kind::TimestampMicros => {
            let v = match timestamp_micros(text).ok_or("not a timestamp")? {
                Point::Value(us) if matches!(k, Kind::TimestampMicros) => us,
                Point::Value(us) => us.div_euclid(1000),
                Point::Infinity => TIMESTAMP_POS_INFINITY,
                Point::NegInfinity => TIMESTAMP_NEG_INFINITY,
            };
            write_num(out, v);
        }
        Kind::TimetzUtc => write_json_str(out, &timetz_utc(text).ok_or("not a time with time zone")?),
        Kind::IntervalMicros => write_num(out, Interval::parse(text).ok_or("not an ISO 8601 interval")?.approx_micros()),
        Kind::IntervalString => write_json_str(out, &Interval::parse(text).ok_or("not an ISO 8601 interval")?.debezium_string()),
        Kind::JsonString => write_json_str(out, utf8(text)?),
        Kind::BitBool => match text {
            b"1" => out.extend_from_slice(b"true"),
            b"0" => out.extend_from_slice(b"false"),
            _ => return Err("bit(1) is not 0 or 1".into()),
        },
        Kind::Bits { .. } => write_base64(out, &bits_bytes(text).ok_or("not a bit string")?),
        Kind::Point => {
            let (x, y) = point_xy(text).ok_or("not a point")?;
            out.extend_from_slice(b"{\"x\":");
            serde_json::to_writer(&mut *out, &x).map_err(|e| e.to_string())?;
            out.extend_from_slice(b",\"y\":");
            serde_json::to_writer(&mut *out, &y).map_err(|e| e.to_string())?;
            out.extend_from_slice(b",\"wkb\":");
            write_base64(out, &point_wkb(x, y));
            out.extend_from_slice(b",\"srid\":null}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(enc: ValueEncoding, flat: bool, type_oid: u32, typmod: i32, text: &str) -> String {
        let mut out = Vec::new();
        Encoder { enc, flat_arrays: flat }.write_value(&mut out, type_oid, typmod, text.as_bytes()).expect("renders");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn walcast_encoding_is_the_json_lines_value() {
        for (oid, text) in
            [(1700, "12.50"), (1082, "2024-02-29"), (1186, "P1D"), (3802, "{\"a\": 1}"), (1007, "{{1,2},{3,4}}"), (1007, "[0:1]={7,8}")]
        {
            let mut want = Vec::new();
            write_json_value(&mut want, oid, text.as_bytes()).expect("walcast");
            assert_eq!(render(ValueEncoding::WALCAST, false, oid, -1, text).into_bytes(), want, "{oid} {text}");
        }
    }

    #[test]
    fn debezium_encoding_by_type() {
        let d = ValueEncoding::DEBEZIUM;
        assert_eq!(render(d, false, 1700, (10 << 16 | 2) + 4, "12.50"), "\"BOI=\"");
        assert_eq!(render(d, false, 1700, -1, "-0.001"), "{\"scale\":3,\"value\":\"/w==\"}");
        assert_eq!(render(d, false, 1700, -1, "NaN"), "null");
        assert_eq!(render(d, false, 1082, -1, "2024-02-29"), "19782");
        assert_eq!(render(d, false, 1083, 3, "00:00:01.5"), "1500");
        assert_eq!(render(d, false, 1083, -1, "00:00:01.5"), "1500000");
        assert_eq!(render(d, false, 1114, 0, "1970-01-01 00:00:02"), "2000");
        assert_eq!(render(d, false, 1114, -1, "infinity"), TIMESTAMP_POS_INFINITY.to_string());
        assert_eq!(render(d, false, 1266, -1, "12:34:56+05:30"), "\"07:04:56Z\"");
        assert_eq!(render(d, false, 114, -1, "{\"a\": 1}"), "\"{\\\"a\\\": 1}\"");
        assert_eq!(render(d, false, 790, -1, "-$1.50"), "\"/2o=\"");
        assert_eq!(render(d, false, 1560, 1, "1"), "true");
        assert_eq!(render(d, false, 1560, 8, "10101010"), "\"qg==\"");
        let connect = ValueEncoding { time: TimePrecision::Connect, ..d };
        assert_eq!(render(connect, false, 1083, -1, "00:00:01.5"), "1500");
        let double = ValueEncoding { decimal: DecimalHandling::Double, ..d };
        assert_eq!(render(double, false, 1700, -1, "12.50"), "12.5");
        assert_eq!(render(double, false, 1700, -1, "NaN"), "\"NaN\"");
    }

    /// A snapshot row read by binary COPY encodes as the same row in text, in every encoding.
    #[test]
    fn a_binary_row_encodes_like_its_text() {
        let rel = crate::decode::fixtures::relation(
            "public",
            "t",
            crate::decode::ReplicaIdentity::Default,
            &[("id", true, 20), ("at", false, 1184), ("n", false, 1700)],
        );
        let (id, at) = (7i64.to_be_bytes(), 1_500_000i64.to_be_bytes());
        // 12.50: one base-10000 digit group 12 (weight 0), then 5000; display scale 2.
        let n: Vec<u8> = [2u16, 0, 0, 2, 12, 5000].iter().flat_map(|v| v.to_be_bytes()).collect();
        let binary = Tuple::from_datums([Datum::Binary(&id), Datum::Binary(&at), Datum::Binary(&n)]);
        let text = Tuple::from_datums([Datum::Text(b"7"), Datum::Text(b"2000-01-01 00:00:01.5+00"), Datum::Text(b"12.50")]);
        for enc in [ValueEncoding::WALCAST, ValueEncoding::DEBEZIUM] {
            let encoder = Encoder { enc, flat_arrays: false };
            let row = |values: &Tuple| {
                let mut out = Vec::new();
                encoder.write_row(&mut out, &rel, values, |_| true, "?").expect("renders");
                String::from_utf8(out).expect("utf-8")
            };
            assert_eq!(row(&binary), row(&text));
        }
    }

    #[test]
    fn arrays_nest_or_flatten() {
        let d = ValueEncoding::DEBEZIUM;
        assert_eq!(render(d, false, 1182, -1, "{{2024-02-29,NULL},{infinity,1970-01-01}}"), "[[19782,null],[2147483647,0]]");
        assert_eq!(render(d, true, 1182, -1, "{{2024-02-29,NULL},{infinity,1970-01-01}}"), "[19782,null,2147483647,0]");
        assert_eq!(render(d, true, 1007, -1, "[0:1]={7,8}"), "[7,8]");
        assert_eq!(render(d, true, 1009, -1, "{\"a \\\"b\",NULL,\"NULL\",{}}"), "[\"a \\\"b\",null,\"NULL\"]");
        assert_eq!(render(d, false, 3807, -1, "{\"{\\\"a\\\": 1}\",NULL}"), "[\"{\\\"a\\\": 1}\",null]");
        assert_eq!(render(d, true, 1020, -1, "{(1,1),(0,0);(3,3),(2,2)}"), "[\"(1,1),(0,0)\",\"(3,3),(2,2)\"]");
    }
}
