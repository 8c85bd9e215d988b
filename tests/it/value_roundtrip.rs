//! The value renderer against a real Postgres: for every type OID walcast renders, values drawn at
//! random by the server (plus edge values) are printed by the type's output function with the
//! replication session's settings, rendered by walcast, and compared with what the server's
//! `to_jsonb` makes of the same value. Allowed differences, as docs/events.md documents them:
//! numeric is a string of its exact text (to_jsonb: a number); bytea is base64 (to_jsonb: the
//! `\x` hex text); a zero UTC offset is `Z` and `+hh` is `+hh:00` (to_jsonb: `+00:00`, `+00`,
//! `-08` as printed); a BC year is an astronomical one, `-0043-03-15` (to_jsonb: `0044-03-15 BC`);
//! oid is a number (to_jsonb: a string); an array with explicit bounds is its text (to_jsonb: a
//! JSON array without them); json numbers compare by value.
//! Random text that is not a server's output is the fuzz target `value_json`'s part.

use serde_json::Value;

use crate::support::*;

/// Values per type drawn with `random()` (seeded, so a failure repeats).
const SAMPLES: usize = 150;

/// A random string of 1..24 characters from U+0001..U+2FFF (controls, quotes, backslashes,
/// braces and non-ASCII included), different per row `g`.
const RANDOM_TEXT: &str =
    "(SELECT string_agg(chr(CASE WHEN random() < 0.3 THEN 1 + floor(random() * 127)::int ELSE 1 + floor(random() * 12287)::int END), '') FROM generate_series(0, g % 24))";

/// `(type OID, SQL of one value from row g, edge values)`.
fn cases() -> Vec<(u32, String, Vec<&'static str>)> {
    let t = RANDOM_TEXT;
    vec![
        (16, "random() < 0.5".into(), vec!["true", "false"]),
        (21, "(floor(random() * 65536) - 32768)::int2".into(), vec!["'-32768'::int2", "'32767'::int2", "'0'::int2"]),
        (23, "(floor(random() * 4294967296) - 2147483648)::int8::int4".into(), vec!["'-2147483648'::int4", "'2147483647'::int4"]),
        (20, "((random() - 0.5) * 1.8e19)::int8".into(), vec!["'-9223372036854775808'::int8", "'9223372036854775807'::int8"]),
        (26, "floor(random() * 4294967295)::int8::text::oid".into(), vec!["'4294967295'::oid", "'0'::oid"]),
        (
            700,
            "((random() - 0.5) * power(10, floor(random() * 70) - 35))::float4".into(),
            vec!["'NaN'::float4", "'Infinity'::float4", "'-Infinity'::float4", "'-0'::float4", "'3.4028235e+38'::float4", "'1e-45'::float4"],
        ),
        (
            701,
            "(random() - 0.5) * power(10::float8, floor(random() * 600) - 300)".into(),
            vec!["'NaN'::float8", "'-Infinity'::float8", "'1e+308'::float8", "'5e-324'::float8", "0.1::float8 + 0.2::float8"],
        ),
        (
            1700,
            "round(((random() - 0.5) * power(10, floor(random() * 40) - 10))::numeric, floor(random() * 20)::int)".into(),
            vec!["'NaN'::numeric", "'Infinity'::numeric", "'-Infinity'::numeric", "'1234567890123456789012345678901234567890.0123456789'::numeric", "'-0.000'::numeric"],
        ),
        (25, t.to_string(), vec!["''", "E'quote \" backslash \\\\ nl \\n tab \\t \\x01'"]),
        (1043, format!("{t}::varchar"), vec![]),
        (1042, format!("{t}::char(30)"), vec![]),
        (19, format!("left({t}, 20)::name"), vec![]),
        (2950, "gen_random_uuid()".into(), vec!["'00000000-0000-0000-0000-000000000000'::uuid"]),
        (
            114,
            format!("json_build_object('k' || g, random(), 's', {t}, 'a', json_build_array(g, null, true, random()::numeric, {t}))"),
            vec![r#"E'{"b": [1, 2.5e10, "x"],\n "a": null, "a": 2, "esc": "\\u00e9\\n\\ud83d\\ude00"}'::json"#, "'  \"just a string\" '::json", "'[]'::json"],
        ),
        (
            3802,
            format!("jsonb_build_object('k' || g, random(), 's', {t}, 'n', jsonb_build_object('d', (random() * 1e6)::numeric(20,4)))"),
            vec![r#"'{"n": 12.50, "big": 123456789012345678901234567890, "s": "日本"}'::jsonb"#, "'42'::jsonb", "'null'::jsonb"],
        ),
        (17, "decode(md5(random()::text) || repeat(md5(g::text), g % 5), 'hex')".into(), vec!["''::bytea", "'\\x00ff'::bytea"]),
        (
            1082,
            "date '2000-01-01' + floor((random() - 0.5) * 2500000)::int".into(),
            vec!["'infinity'::date", "'-infinity'::date", "'0001-01-01 BC'::date", "'0044-03-15 BC'::date", "'4713-01-01 BC'::date"],
        ),
        (1083, "time '00:00' + random() * interval '24 hours'".into(), vec!["'24:00:00'::time", "'00:00:00'::time"]),
        (
            1266,
            "((time '00:00' + random() * interval '24 hours')::text || (ARRAY['+00', '-08', '+05:30', '+14', '-03:30', '+01:02:03'])[1 + g % 6])::timetz"
                .into(),
            vec!["'24:00:00-15:59'::timetz"],
        ),
        (
            1114,
            "timestamp '2000-01-01' + (random() - 0.5) * interval '3000000 days'".into(),
            vec!["'infinity'::timestamp", "'-infinity'::timestamp", "'0044-03-15 12:00:00 BC'::timestamp", "'294276-12-31 23:59:59.999999'::timestamp"],
        ),
        (
            1184,
            "timestamptz '2000-01-01 00:00+00' + (random() - 0.5) * interval '3000000 days'".into(),
            vec!["'infinity'::timestamptz", "'0044-03-15 12:00:00+00 BC'::timestamptz", "'2024-02-29 13:14:15.5+02'::timestamptz"],
        ),
        (1186, "make_interval(0, (g % 13), 0, (g % 40) - 20, 0, 0, (random() - 0.5) * 1e6)".into(), vec!["'0'::interval", "'-1 day +02:00:00.5'::interval"]),
        (1007, "ARRAY[g, NULL, -g, (random() * 1000)::int4]".into(), vec!["'{}'::int4[]", "'{{1,2},{3,4}}'::int4[]", "'[0:1]={7,8}'::int4[]"]),
        (1009, format!("ARRAY[{t}, NULL, 'NULL', '', 'x,y', '{{z}}', {t}]"), vec![r#"ARRAY['a b', 'with "quote"', 'back\slash']"#]),
        (1022, "ARRAY[random() * 1e10, 'NaN', '-Infinity', -0.0]::float8[]".into(), vec![]),
        (1231, "ARRAY[round((random() * 1e6)::numeric, g % 6), 'NaN']::numeric[]".into(), vec![]),
        (3807, format!("ARRAY[jsonb_build_object('s', {t}), '[1, 2]', NULL]::jsonb[]"), vec![]),
        (1000, "ARRAY[random() < 0.5, NULL]".into(), vec![]),
        (1182, "ARRAY[date '2000-01-01' + floor((random() - 0.5) * 2500000)::int, 'infinity']".into(), vec![]),
        (1185, "ARRAY[timestamptz '2000-01-01 00:00+00' + (random() - 0.5) * interval '3000000 days']".into(), vec![]),
        (1001, "ARRAY[decode(md5(random()::text), 'hex'), ''::bytea, NULL]".into(), vec![]),
        (2951, "ARRAY[gen_random_uuid(), gen_random_uuid()]".into(), vec![]),
        (1187, "ARRAY[make_interval(0, 0, 0, g % 40, 0, 0, random() * 1e5)]".into(), vec![]),
        (1020, "ARRAY[box(point(random(), g), point(-g, random()))]".into(), vec![]),
        (869, "('10.' || (g % 256) || '.' || floor(random() * 256) || '.1/' || (8 + g % 24))::inet".into(), vec!["'::1'::inet"]),
        (790, "(random() * 1e6)::numeric(12,2)::money".into(), vec![]),
        (600, "point(random() * 1e6, -random())".into(), vec![]),
        (3904, "int4range(g, g + (random() * 100)::int)".into(), vec!["'empty'::int4range", "'(,)'::int4range"]),
        (1560, "(floor(random() * 256)::int)::bit(8)".into(), vec![]),
        (3614, format!("to_tsvector('simple', {t})"), vec![]),
    ]
}

/// Whether walcast's JSON for a value of type `oid` is the value `to_jsonb` gave (`pg`), up to
/// the documented differences; `text` is the server's text output of it.
fn same(oid: u32, text: &str, ours: &Value, pg: &Value) -> bool {
    if let (Some(_), Value::String(s)) = (element(oid), ours) {
        // An array with explicit bounds stays its text.
        return s == text && s.starts_with('[') && pg.is_array();
    }
    match (oid, ours, pg) {
        (_, Value::Array(a), Value::Array(b)) => {
            let elem = element(oid).unwrap_or(0);
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(elem, "", x, y))
        }
        (1700 | 1231, Value::String(s), Value::Number(n)) => s.parse::<f64>().ok() == n.as_f64() && (text.is_empty() || s == text),
        (17 | 1001, Value::String(b64), Value::String(hex)) => base64_to_hex(b64).as_deref() == Some(hex.as_str()),
        (1082 | 1114, Value::String(a), Value::String(b)) => *a == iso_form(b, false),
        (1184 | 1266, Value::String(a), Value::String(b)) => *a == iso_form(b, true),
        (26, Value::Number(a), Value::String(b)) => a.to_string() == *b,
        (114 | 3802, _, _) => json_same(ours, pg),
        (_, Value::Number(a), Value::Number(b)) => a == b || a.as_f64() == b.as_f64(),
        _ => ours == pg,
    }
}

/// `to_jsonb`'s text of a date/time value in walcast's form: a BC year as an astronomical one
/// (44 BC is -0043, 1 BC is 0000); with `offset`, a zero UTC offset as `Z` and `+hh` as `+hh:00`.
fn iso_form(pg: &str, offset: bool) -> String {
    let (s, bc) = match pg.strip_suffix(" BC") {
        Some(s) => (s, true),
        None => (pg, false),
    };
    let mut s = s.to_owned();
    if bc {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if let Some(year) = s[..digits].parse::<u32>().ok().and_then(|y| y.checked_sub(1)) {
            let year = if year == 0 { "0000".to_owned() } else { format!("-{year:04}") };
            s.replace_range(..digits, &year);
        }
    }
    // The offset follows the time of day, which has no sign in it (the date part does).
    let time_at = s.find('T').map_or(0, |t| t + 1);
    if let Some(at) = s[time_at..].rfind(['+', '-']).map(|i| i + time_at).filter(|_| offset) {
        let zone = &s[at + 1..];
        if zone.bytes().all(|b| b == b'0' || b == b':') {
            s.replace_range(at.., "Z");
        } else if zone.len() == 2 {
            s.push_str(":00");
        }
    }
    s
}

/// JSON values equal with numbers compared by value (`1.50` in jsonb is 1.5).
fn json_same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_same(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_same(v, w))),
        _ => a == b,
    }
}

/// The element type of the array types above; 0 for a scalar.
fn element(oid: u32) -> Option<u32> {
    Some(match oid {
        1007 => 23,
        1009 => 25,
        1022 => 701,
        1231 => 1700,
        3807 => 3802,
        1000 => 16,
        1182 => 1082,
        1185 => 1184,
        1001 => 17,
        2951 => 2950,
        1187 => 1186,
        1020 => 603,
        _ => return None,
    })
}

fn base64_to_hex(b64: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some(format!("\\x{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

#[tokio::test]
async fn server_output_renders_to_what_to_jsonb_gives() {
    let db = TestDb::create("value_roundtrip").await;
    let client = db.client().await;
    // The replication session's settings (source::ConnParams), so the text is what pgoutput sends.
    exec(&client, "SET datestyle = 'ISO, YMD'; SET intervalstyle = iso_8601; SET timezone = UTC; SET extra_float_digits = 3; SET bytea_output = hex; SELECT setseed(0.42)").await;
    let mut checked = 0;
    let mut failures = Vec::new();
    for (oid, random, edges) in cases() {
        // The simple query protocol returns `v` as the type's output function prints it, as
        // pgoutput sends it (`v::text` is not always that: bool's cast gives `true`, not `t`).
        let mut values: Vec<String> = vec![format!("SELECT {random} FROM generate_series(1, {SAMPLES}) g")];
        values.extend(edges.iter().map(|e| format!("SELECT {e}")));
        let sql = format!("SELECT v, to_jsonb(v)::text FROM ({}) s(v) WHERE v IS NOT NULL", values.join(" UNION ALL "));
        let rows = client.simple_query(&sql).await.unwrap_or_else(|e| panic!("{}: {sql}", describe(&e)));
        for row in rows {
            let tokio_postgres::SimpleQueryMessage::Row(row) = row else { continue };
            let (Some(text), Some(jsonb)) = (row.get(0), row.get(1)) else { continue };
            let pg: Value = serde_json::from_str(jsonb).unwrap_or_else(|e| panic!("to_jsonb gave {jsonb}: {e}"));
            checked += 1;
            match walcast::decode::to_json_value(oid, text.as_bytes()) {
                Ok(ours) if same(oid, text, &ours, &pg) => {}
                Ok(ours) => failures.push(format!("type {oid}: {text:?} -> {ours} but to_jsonb gives {pg}")),
                Err(e) => failures.push(format!("type {oid}: {text:?} was refused: {e}")),
            }
        }
    }
    db.drop().await;
    assert!(failures.is_empty(), "{} of {checked} values differ:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > cases().len() * SAMPLES, "only {checked} values checked");
}
