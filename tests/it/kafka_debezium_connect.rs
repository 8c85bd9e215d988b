//! A consumer-side Kafka Connect JSON deserializer, driven by the schema in each record the way
//! Connect's JsonConverter is: it turns a field's value back into the text Postgres prints for
//! it (decimals from base64 + scale, dates from epoch days, times and timestamps from micro- or
//! milliseconds, Bits from little-endian bytes, ...). Written from the schemas' documented
//! meaning, independently of walcast's encoder; `kafka_debezium` compares its output with
//! Postgres.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;

/// Debezium's +infinity / -infinity timestamps.
const TS_POS_INF: i64 = 9_223_372_036_825_200_000;
const TS_NEG_INF: i64 = -9_223_372_036_832_400_000;

/// Big-endian two's-complement bytes -> (negative, decimal digits of the magnitude).
fn twos_complement_to_decimal(bytes: &[u8]) -> (bool, String) {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        // Magnitude = two's complement of the bytes.
        for b in mag.iter_mut() {
            *b = !*b;
        }
        for b in mag.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    // Repeated division by 10.
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    (negative, String::from_utf8(digits).expect("ascii"))
}

/// Unscaled bytes + scale -> the decimal text Postgres prints (`-0.001`, `1.50`).
pub fn decimal_text(b64: &str, scale: i64) -> String {
    let bytes = BASE64.decode(b64).expect("base64");
    let (negative, digits) = twos_complement_to_decimal(&bytes);
    let mut s = if scale > 0 {
        let scale = scale as usize;
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        format!("{int}.{frac}")
    } else {
        format!("{digits}{}", "0".repeat((-scale) as usize))
    };
    if negative {
        s.insert(0, '-');
    }
    s
}

/// Days since 1970 -> (astronomical year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Postgres's date text (`2024-02-29`, `0044-03-15 BC`): returns (date, bc suffix).
fn pg_date(days: i64) -> (String, &'static str) {
    let (y, m, d) = civil_from_days(days);
    if y <= 0 {
        (format!("{:04}-{m:02}-{d:02}", 1 - y), " BC")
    } else {
        (format!("{y:04}-{m:02}-{d:02}"), "")
    }
}

/// Microseconds of the day -> `HH:MM:SS[.fraction]` (trailing zeros dropped, as Postgres).
fn pg_time(micros: i64) -> String {
    let secs = micros / 1_000_000;
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let frac = micros % 1_000_000;
    if frac != 0 {
        s.push('.');
        s.push_str(format!("{frac:06}").trim_end_matches('0'));
    }
    s
}

fn pg_timestamp(micros: i64) -> String {
    match micros {
        TS_POS_INF => return "infinity".into(),
        TS_NEG_INF => return "-infinity".into(),
        _ => {}
    }
    let (date, bc) = pg_date(micros.div_euclid(86_400_000_000));
    format!("{date} {}{bc}", pg_time(micros.rem_euclid(86_400_000_000)))
}

/// ISO `[-]YYYY-MM-DDTHH:MM:SS[.f]Z` (astronomical year) -> Postgres's `YYYY-MM-DD HH:MM:SS[.f]+00[ BC]`.
fn pg_zoned_timestamp(s: &str) -> String {
    if s == "infinity" || s == "-infinity" {
        return s.to_string();
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let body = body.strip_suffix('Z').expect("UTC timestamp ends in Z");
    let (date, time) = body.split_once('T').expect("T separator");
    let (year, rest) = date.split_once('-').expect("year");
    let year: i64 = year.parse().expect("year digits");
    let astronomical = if neg { -year } else { year };
    if astronomical <= 0 {
        format!("{:04}-{rest} {time}+00 BC", 1 - astronomical)
    } else {
        format!("{year:04}-{rest} {time}+00")
    }
}

fn f64_text(v: f64) -> String {
    format!("{v}")
}

/// One value of a field (or array item) schema -> Postgres's text of it; `None` for null.
pub fn to_pg_text(schema: &Value, v: &Value) -> Option<String> {
    if v.is_null() {
        return None;
    }
    let ty = schema["type"].as_str().expect("schema type");
    let name = schema["name"].as_str().unwrap_or("");
    let int = || v.as_i64().unwrap_or_else(|| panic!("{name} {ty}: not an integer: {v}"));
    let string = || v.as_str().unwrap_or_else(|| panic!("{name} {ty}: not a string: {v}")).to_string();
    Some(match (ty, name) {
        ("bytes", "org.apache.kafka.connect.data.Decimal") => {
            let scale: i64 = schema["parameters"]["scale"].as_str().expect("scale").parse().expect("scale number");
            decimal_text(v.as_str().expect("base64"), scale)
        }
        ("struct", "io.debezium.data.VariableScaleDecimal") => {
            decimal_text(v["value"].as_str().expect("value"), v["scale"].as_i64().expect("scale"))
        }
        ("int32", "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date") => match int() {
            v if v == i64::from(i32::MAX) => "infinity".into(),
            v if v == i64::from(i32::MIN) => "-infinity".into(),
            days => {
                let (d, bc) = pg_date(days);
                format!("{d}{bc}")
            }
        },
        ("int64", "io.debezium.time.MicroTime") => pg_time(int()),
        ("int32", "io.debezium.time.Time" | "org.apache.kafka.connect.data.Time") => pg_time(int() * 1000),
        ("int64", "io.debezium.time.MicroTimestamp") => pg_timestamp(int()),
        ("int64", "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp") => match int() {
            TS_POS_INF | TS_NEG_INF => pg_timestamp(int()),
            ms => pg_timestamp(ms * 1000),
        },
        ("string", "io.debezium.time.ZonedTimestamp") => pg_zoned_timestamp(&string()),
        ("string", "io.debezium.time.ZonedTime") => format!("{}+00", string().strip_suffix('Z').expect("UTC time ends in Z")),
        ("int64", "io.debezium.time.MicroDuration") => int().to_string(),
        ("bytes", "io.debezium.data.Bits") => {
            let bytes = BASE64.decode(string()).expect("base64");
            // Little-endian bytes, bit 0 is the last character.
            (0..bytes.len() * 8).rev().map(|i| if bytes[i / 8] >> (i % 8) & 1 == 1 { '1' } else { '0' }).collect()
        }
        ("struct", "io.debezium.data.geometry.Point") => {
            format!("({},{})", f64_text(v["x"].as_f64().expect("x")), f64_text(v["y"].as_f64().expect("y")))
        }
        ("bytes", _) => {
            let bytes = BASE64.decode(string()).expect("base64");
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("\\x{hex}")
        }
        ("boolean", _) => if v.as_bool().expect("bool") { "t" } else { "f" }.to_string(),
        ("int8" | "int16" | "int32" | "int64", _) => int().to_string(),
        // JSON has no NaN or infinities: Jackson writes them as strings.
        ("float" | "double", _) => match v {
            Value::String(s) => s.clone(),
            _ => f64_text(v.as_f64().expect("number")),
        },
        ("string", _) => string(),
        other => panic!("no rule for schema {other:?}"),
    })
}

/// A field (scalar or array) -> Postgres text, or the list of its elements' texts.
pub fn field_to_pg(schema: &Value, v: &Value) -> Value {
    if schema["type"] == "array" {
        return match v {
            Value::Null => Value::Null,
            Value::Array(items) => {
                Value::Array(items.iter().map(|x| to_pg_text(&schema["items"], x).map_or(Value::Null, Value::String)).collect())
            }
            other => panic!("array field holds {other}"),
        };
    }
    to_pg_text(schema, v).map_or(Value::Null, Value::String)
}

/// Whether two texts of a float are the same number (formatting differs: `3.4028235e+38`;
/// JSON may not keep the sign of zero).
pub fn same_float(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y || x.is_nan() && y.is_nan(),
        _ => a == b,
    }
}

#[test]
fn deserializer_reads_documented_forms() {
    assert_eq!(decimal_text("AJY=", 2), "1.50");
    assert_eq!(decimal_text("/w==", 3), "-0.001");
    assert_eq!(decimal_text("AA==", 3), "0.000");
    assert_eq!(decimal_text("/2o=", 2), "-1.50");
    assert_eq!(pg_date(19_782), ("2024-02-29".into(), ""));
    assert_eq!(pg_date(-735_160), ("0044-03-15".into(), " BC"));
    assert_eq!(pg_timestamp(1_709_212_455_123_456), "2024-02-29 13:14:15.123456");
    assert_eq!(pg_zoned_timestamp("-0043-03-15T12:00:00Z"), "0044-03-15 12:00:00+00 BC");
}
