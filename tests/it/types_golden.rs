//! One table with a column of every supported kind of type; rows of typical and edge values are
//! streamed and each `after` object is compared with a golden value written by hand from the
//! rules of the line format (docs/events.md):
//! - bool -> true/false; int2/int4/int8/oid -> JSON numbers; float4/float8 -> numbers, with NaN,
//!   Infinity and -Infinity as strings; numeric -> its exact text as a string;
//! - json/jsonb -> embedded JSON; bytea -> base64;
//! - date/timestamp/timestamptz/time/timetz -> ISO 8601 (`T` separator, `Z` for UTC, `+hh:mm`
//!   offsets, BC years as astronomical years: 44 BC is -0043), infinity as "infinity"/"-infinity";
//! - interval -> ISO 8601 duration (the server's iso_8601 style);
//! - arrays -> JSON arrays (nested for several dimensions), elements converted by element type,
//!   also arrays of enums, domains and composites;
//! - domains -> their base type's rule;
//! - everything else (text types, uuid, enums, ranges, network, money, bit strings, xml,
//!   tsvector, geometric types, composites) -> the Postgres text form as a string.
//!
//! A second table of user-defined types and their arrays is checked as snapshot `read` rows and
//! as streamed inserts: both take the same rules.

use crate::support::*;
use serde_json::{json, Map, Value};

pub(crate) const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TYPE pair AS (a int4, b text);
CREATE TABLE golden (
    id int4 PRIMARY KEY,
    c_bool bool,
    c_int2 int2,
    c_int4 int4,
    c_int8 int8,
    c_numeric numeric,
    c_float4 float4,
    c_float8 float8,
    c_text text,
    c_varchar varchar(10),
    c_char char(5),
    c_name name,
    c_uuid uuid,
    c_json json,
    c_jsonb jsonb,
    c_bytea bytea,
    c_date date,
    c_time time,
    c_timetz timetz,
    c_timestamp timestamp,
    c_timestamptz timestamptz,
    c_interval interval,
    c_int4_arr int4[],
    c_int4_2d int4[][],
    c_int8_arr int8[],
    c_text_arr text[],
    c_varchar_arr varchar(20)[],
    c_numeric_arr numeric[],
    c_float8_arr float8[],
    c_jsonb_arr jsonb[],
    c_bool_arr bool[],
    c_date_arr date[],
    c_tstz_arr timestamptz[],
    c_interval_arr interval[],
    c_uuid_arr uuid[],
    c_bytea_arr bytea[],
    c_box_arr box[],
    c_mood mood,
    c_int4range int4range,
    c_numrange numrange,
    c_tsrange tsrange,
    c_tstzrange tstzrange,
    c_daterange daterange,
    c_inet inet,
    c_cidr cidr,
    c_macaddr macaddr,
    c_macaddr8 macaddr8,
    c_money money,
    c_bit bit(8),
    c_varbit varbit,
    c_xml xml,
    c_tsvector tsvector,
    c_point point,
    c_line line,
    c_lseg lseg,
    c_box box,
    c_path path,
    c_polygon polygon,
    c_circle circle,
    c_oid oid,
    c_domain posint,
    c_composite pair
);
"#;

/// Row 1: typical values, plus the hard cases of text, json and bytea.
pub(crate) const ROW_TYPICAL: &str = r#"
INSERT INTO golden VALUES (
    1,
    true,
    12345,
    -42,
    1234567890123,
    '1234567890123456789012345678901234567890.0123456789',
    1.1,
    0.1::float8 + 0.2::float8,
    E'quote " backslash \\ newline \n tab \t cr \r bell \x07 slash / end',
    'héllo wörl',
    'ab',
    'pg_name',
    'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
    E'{"b": [1, 2.5, "x"],\n "a": null, "esc": "\\u00e9\\n", "s": "ünï \\"q\\""}',
    '{"n": 12.50, "nested": {"t": true, "arr": []}, "s": "日本"}',
    (SELECT decode(string_agg(lpad(to_hex(i), 2, '0'), '' ORDER BY i), 'hex') FROM generate_series(0, 255) i),
    '2024-02-29',
    '13:14:15.123456',
    '12:34:56+05:30',
    '2024-02-29 13:14:15.123456',
    '2024-02-29 13:14:15.5+02',
    '1 year 2 months 3 days 4 hours 5 minutes 6 seconds',
    '{1,2,NULL,-3}',
    '{{1,2},{3,4}}',
    ARRAY[9223372036854775807, -9223372036854775808],
    ARRAY['a b', 'with "quote"', 'back\slash', NULL, 'NULL', '', 'x,y', '{z}', 'ünï', E'line\nbreak'],
    ARRAY['v1', 'v 2'],
    '{1.50,NaN,-0.001}',
    '{NaN,1.5,-Infinity,Infinity}',
    ARRAY['{"a": 1}'::jsonb, '[1, 2]', '"s"', '{"q": "x\"y"}', NULL],
    '{t,f,NULL}',
    ARRAY['2024-01-01'::date, 'infinity', '0044-03-15 BC'],
    ARRAY['2024-01-01 00:00:00+00'::timestamptz, 'infinity', '2024-06-01 12:30:00+02'],
    ARRAY['1 day'::interval, '01:00:00'],
    ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '00000000-0000-0000-0000-000000000000'],
    ARRAY['\x0102'::bytea, ''::bytea],
    ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)'],
    'happy',
    '(1,10]',
    '[1.5,2.5]',
    '[2024-01-01 00:00:00,2024-01-02 00:00:00)',
    '[2024-01-01 00:00:00+00,)',
    '[2024-01-01,2024-02-01]',
    '192.168.0.1/24',
    '10.0.0.0/8',
    '08:00:2b:01:02:03',
    '08:00:2b:01:02:03:04:05',
    1234.56,
    B'10101010',
    B'101',
    '<a attr="1">x &amp; y</a>',
    'a fat cat sat on a mat',
    '(1.5,-2)',
    '{1,-1,0}',
    '[(0,0),(1,1)]',
    '(1,1),(0,0)',
    '[(0,0),(1,1),(2,0)]',
    '((0,0),(1,1),(1,0))',
    '<(0,0),1.5>',
    12345,
    42,
    ROW(1, 'x y')
);
"#;

/// Row 3: minimums, NaN / -Infinity, empty values, BC dates, negative and odd offsets.
pub(crate) const ROW_LOW: &str = r#"
INSERT INTO golden (id, c_bool, c_int2, c_int4, c_int8, c_numeric, c_float4, c_float8, c_text, c_varchar,
    c_char, c_name, c_uuid, c_json, c_jsonb, c_bytea, c_date, c_time, c_timetz, c_timestamp, c_timestamptz,
    c_interval, c_int4_arr, c_int4_2d, c_text_arr, c_numeric_arr, c_jsonb_arr, c_bool_arr, c_tstz_arr,
    c_mood, c_int4range, c_numrange, c_daterange, c_inet, c_cidr, c_money, c_bit, c_varbit, c_tsvector, c_oid)
VALUES (
    3, false, -32768, -2147483648, -9223372036854775808, 'NaN', 'NaN', '-Infinity', '', '',
    '', '', '00000000-0000-0000-0000-000000000000', '"just a string"', '[]', '', '0044-03-15 BC', '00:00:00',
    '12:00:00-08', '-infinity', '0044-03-15 12:00:00+00 BC',
    '-1 day +02:00:00.5', '{}', '{{{1},{2}},{{3},{4}}}', '{}', '{}', '{}', '{NULL}', '{-infinity}',
    'sad', 'empty', '(,)', 'empty', '::1', '2001:db8::/32', -1.5, B'00000000', B'', '', 0
);
"#;

/// Row 4: maximums, Infinity, negative zero, infinity dates, zero interval.
pub(crate) const ROW_HIGH: &str = r#"
INSERT INTO golden (id, c_int2, c_int4, c_int8, c_numeric, c_float4, c_float8, c_json, c_jsonb, c_date,
    c_time, c_timetz, c_timestamp, c_timestamptz, c_interval, c_float8_arr, c_date_arr, c_oid, c_numeric_arr, c_int4_arr)
VALUES (
    4, 32767, 2147483647, 9223372036854775807, 'Infinity', '3.4028235e+38', '-0',
    '[1, "a", null, true, {"k": [ ]}]', '42', 'infinity',
    '24:00:00', '01:02:03+00', 'infinity', 'infinity', '0', '{1e+308,5e-324,-0}', '{0001-01-01 BC}', 4294967295,
    '{-0.000,0.5}', '[0:1]={7,8}'
);
"#;

/// Base64 of the bytes 0..=255, written out.
pub(crate) const ALL_BYTES_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6ChoqOkpaanqKmqq6ytrq+wsbKztLW2t7i5uru8vb6/wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t/g4eLj5OXm5+jp6uvs7e7v8PHy8/T19vf4+fr7/P3+/w==";

/// The columns in table order (the `after` object must have exactly these keys).
fn columns() -> Vec<String> {
    SCHEMA
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("c_") || l.starts_with("id "))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

/// A full row: every column NULL except the ones given.
fn row(values: Value) -> Value {
    let mut m = Map::new();
    for c in columns() {
        m.insert(c, Value::Null);
    }
    for (k, v) in values.as_object().expect("object") {
        assert!(m.contains_key(k), "no column {k}");
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

fn expected_typical() -> Value {
    row(json!({
        "id": 1,
        "c_bool": true,
        "c_int2": 12345,
        "c_int4": -42,
        "c_int8": 1234567890123_i64,
        "c_numeric": "1234567890123456789012345678901234567890.0123456789",
        "c_float4": 1.1,
        "c_float8": 0.30000000000000004,
        "c_text": "quote \" backslash \\ newline \n tab \t cr \r bell \u{7} slash / end",
        "c_varchar": "héllo wörl",
        "c_char": "ab   ",
        "c_name": "pg_name",
        "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "c_json": {"b": [1, 2.5, "x"], "a": null, "esc": "é\n", "s": "ünï \"q\""},
        "c_jsonb": {"n": 12.5, "nested": {"t": true, "arr": []}, "s": "日本"},
        "c_bytea": ALL_BYTES_B64,
        "c_date": "2024-02-29",
        "c_time": "13:14:15.123456",
        "c_timetz": "12:34:56+05:30",
        "c_timestamp": "2024-02-29T13:14:15.123456",
        "c_timestamptz": "2024-02-29T11:14:15.5Z",
        "c_interval": "P1Y2M3DT4H5M6S",
        "c_int4_arr": [1, 2, null, -3],
        "c_int4_2d": [[1, 2], [3, 4]],
        "c_int8_arr": [i64::MAX, i64::MIN],
        "c_text_arr": ["a b", "with \"quote\"", "back\\slash", null, "NULL", "", "x,y", "{z}", "ünï", "line\nbreak"],
        "c_varchar_arr": ["v1", "v 2"],
        "c_numeric_arr": ["1.50", "NaN", "-0.001"],
        "c_float8_arr": ["NaN", 1.5, "-Infinity", "Infinity"],
        "c_jsonb_arr": [{"a": 1}, [1, 2], "s", {"q": "x\"y"}, null],
        "c_bool_arr": [true, false, null],
        "c_date_arr": ["2024-01-01", "infinity", "-0043-03-15"],
        "c_tstz_arr": ["2024-01-01T00:00:00Z", "infinity", "2024-06-01T10:30:00Z"],
        "c_interval_arr": ["P1D", "PT1H"],
        "c_uuid_arr": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"],
        "c_bytea_arr": ["AQI=", ""],
        "c_box_arr": ["(1,1),(0,0)", "(3,3),(2,2)"],
        "c_mood": "happy",
        "c_int4range": "[2,11)",
        "c_numrange": "[1.5,2.5]",
        "c_tsrange": "[\"2024-01-01 00:00:00\",\"2024-01-02 00:00:00\")",
        "c_tstzrange": "[\"2024-01-01 00:00:00+00\",)",
        "c_daterange": "[2024-01-01,2024-02-02)",
        "c_inet": "192.168.0.1/24",
        "c_cidr": "10.0.0.0/8",
        "c_macaddr": "08:00:2b:01:02:03",
        "c_macaddr8": "08:00:2b:01:02:03:04:05",
        "c_money": "$1,234.56",
        "c_bit": "10101010",
        "c_varbit": "101",
        "c_xml": "<a attr=\"1\">x &amp; y</a>",
        "c_tsvector": "'a' 'cat' 'fat' 'mat' 'on' 'sat'",
        "c_point": "(1.5,-2)",
        "c_line": "{1,-1,0}",
        "c_lseg": "[(0,0),(1,1)]",
        "c_box": "(1,1),(0,0)",
        "c_path": "[(0,0),(1,1),(2,0)]",
        "c_polygon": "((0,0),(1,1),(1,0))",
        "c_circle": "<(0,0),1.5>",
        "c_oid": 12345,
        "c_domain": 42,
        "c_composite": "(1,\"x y\")"
    }))
}

fn expected_low() -> Value {
    row(json!({
        "id": 3,
        "c_bool": false,
        "c_int2": -32768,
        "c_int4": -2147483648_i64,
        "c_int8": i64::MIN,
        "c_numeric": "NaN",
        "c_float4": "NaN",
        "c_float8": "-Infinity",
        "c_text": "",
        "c_varchar": "",
        "c_char": "     ",
        "c_name": "",
        "c_uuid": "00000000-0000-0000-0000-000000000000",
        "c_json": "just a string",
        "c_jsonb": [],
        "c_bytea": "",
        "c_date": "-0043-03-15",
        "c_time": "00:00:00",
        "c_timetz": "12:00:00-08:00",
        "c_timestamp": "-infinity",
        "c_timestamptz": "-0043-03-15T12:00:00Z",
        "c_interval": "P-1DT2H0.5S",
        "c_int4_arr": [],
        "c_int4_2d": [[[1], [2]], [[3], [4]]],
        "c_text_arr": [],
        "c_numeric_arr": [],
        "c_jsonb_arr": [],
        "c_bool_arr": [null],
        "c_tstz_arr": ["-infinity"],
        "c_mood": "sad",
        "c_int4range": "empty",
        "c_numrange": "(,)",
        "c_daterange": "empty",
        "c_inet": "::1",
        "c_cidr": "2001:db8::/32",
        "c_money": "-$1.50",
        "c_bit": "00000000",
        "c_varbit": "",
        "c_tsvector": "",
        "c_oid": 0
    }))
}

fn expected_high() -> Value {
    row(json!({
        "id": 4,
        "c_int2": 32767,
        "c_int4": 2147483647,
        "c_int8": i64::MAX,
        "c_numeric": "Infinity",
        "c_float4": 3.4028235e38,
        "c_float8": -0.0,
        "c_json": [1, "a", null, true, {"k": []}],
        "c_jsonb": 42,
        "c_date": "infinity",
        "c_time": "24:00:00",
        "c_timetz": "01:02:03Z",
        "c_timestamp": "infinity",
        "c_timestamptz": "infinity",
        "c_interval": "PT0S",
        "c_float8_arr": [1e308, 5e-324, -0.0],
        "c_date_arr": ["0000-01-01"],
        "c_oid": 4294967295_u32,
        "c_numeric_arr": ["0.000", "0.5"],
        // Explicit lower bounds cannot be carried by a JSON array: the text stays whole.
        "c_int4_arr": "[0:1]={7,8}"
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_renders_as_documented() {
    let db = TestDb::create("types").await;
    let sql = db.client().await;
    exec(&sql, SCHEMA).await;
    db.create_publication(&["golden"]).await;
    db.create_slot().await;
    let mut wc = Walcast::new(&db);
    wc.start();

    insert_rows(&sql).await;

    let lines = wc.wait_lines(4, WAIT).await;
    check_golden(&lines, "insert");
    wc.stop().await;
    db.drop().await;
}

/// The same rows loaded by the initial snapshot (read by binary COPY on this UTF-8 database:
/// the common types in their send format, converted by walcast) read exactly as streamed.
#[tokio::test(flavor = "multi_thread")]
async fn every_type_snapshots_as_documented() {
    let db = TestDb::create("types_snap").await;
    let sql = db.client().await;
    exec(&sql, SCHEMA).await;
    db.create_publication(&["golden"]).await;
    insert_rows(&sql).await;
    let mut wc = Walcast::new(&db);
    wc.start(); // creates the slot, so the rows arrive as a snapshot

    let mut lines = wc.wait_lines(4, WAIT).await;
    lines.sort_by_key(|l| l["after"]["id"].as_i64());
    check_golden(&lines, "read");
    wc.stop().await;
    db.drop().await;
}

async fn insert_rows(sql: &tokio_postgres::Client) {
    exec(sql, ROW_TYPICAL).await;
    exec(sql, "INSERT INTO golden (id) VALUES (2)").await;
    exec(sql, ROW_LOW).await;
    exec(sql, ROW_HIGH).await;
}

/// The four rows of `insert_rows` as lines of `op`, each `after` against its golden object;
/// every wrong column is reported at once.
fn check_golden(lines: &[Value], op: &str) {
    assert_eq!(lines.len(), 4);
    let expected = [expected_typical(), row(json!({"id": 2})), expected_low(), expected_high()];
    let mut problems = Vec::new();
    for (line, want) in lines.iter().zip(&expected) {
        assert_eq!(line["op"], op, "{line}");
        let id = &want["id"];
        assert_eq!(line["key"], json!({"id": id}), "{line}");
        let got = line["after"].as_object().unwrap_or_else(|| panic!("no after object: {line}"));
        let got_cols: Vec<&String> = got.keys().collect();
        let want_cols: Vec<&String> = want.as_object().expect("object").keys().collect();
        let mut got_sorted = got_cols.clone();
        got_sorted.sort();
        let mut want_sorted = want_cols.clone();
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted, "row {id}: columns");
        for (col, want_v) in want.as_object().expect("object") {
            if let Some(d) = json_diff(want_v, &got[col], &format!("row {id} {col}")) {
                problems.push(d);
            }
        }
    }
    assert!(problems.is_empty(), "{} value(s) differ from the golden file:\n  {}", problems.len(), problems.join("\n  "));
}

const USER_TYPES: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'very, very happy');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE DOMAIN small AS posint CHECK (VALUE < 100);
CREATE DOMAIN tags AS text[];
CREATE TYPE pair AS (a int4, b text);
CREATE TABLE u (
    id int4 PRIMARY KEY,
    moods mood[],
    counts posint[],
    grid small[][],
    pairs pair[],
    tag_list tags,
    n posint,
    m mood,
    p pair
);
CREATE TABLE u2 (LIKE u INCLUDING ALL);
INSERT INTO u VALUES
    (1, '{happy,sad,NULL,"very, very happy"}', '{1,2,3}', '{{1,2},{3,99}}', ARRAY[ROW(1, 'a b')::pair, ROW(2, NULL)::pair, NULL],
     '{x,"y z",NULL}', 42, 'ok', ROW(3, 'c')),
    (2, '{}', NULL, NULL, '{}', '{}', NULL, NULL, NULL);
"#;

fn expected_user_types() -> [Value; 2] {
    [
        json!({
            "id": 1,
            "moods": ["happy", "sad", null, "very, very happy"],
            "counts": [1, 2, 3],
            "grid": [[1, 2], [3, 99]],
            "pairs": ["(1,\"a b\")", "(2,)", null],
            "tag_list": ["x", "y z", null],
            "n": 42,
            "m": "ok",
            "p": "(3,c)"
        }),
        json!({"id": 2, "moods": [], "counts": null, "grid": null, "pairs": [], "tag_list": [], "n": null, "m": null, "p": null}),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn user_defined_types_snapshot_and_stream_as_documented() {
    let db = TestDb::create("types_user").await;
    let sql = db.client().await;
    exec(&sql, USER_TYPES).await;
    db.create_publication(&["u", "u2"]).await;
    let mut wc = Walcast::new(&db);
    wc.start(); // creates the slot, so the rows of u arrive as a snapshot
    let lines = wc.wait_lines(2, WAIT).await;
    let mut problems = Vec::new();
    for (line, want) in lines.iter().zip(expected_user_types()) {
        assert_eq!((&line["op"], &line["table"]), (&json!("read"), &json!("u")), "{line}");
        if let Some(d) = json_diff(&want, &line["after"], &format!("read u {}", want["id"])) {
            problems.push(d);
        }
    }
    exec(&sql, "INSERT INTO u2 SELECT * FROM u ORDER BY id").await;
    let lines = wc.wait_lines(4, WAIT).await;
    for (line, want) in lines[2..].iter().zip(expected_user_types()) {
        assert_eq!((&line["op"], &line["table"]), (&json!("insert"), &json!("u2")), "{line}");
        if let Some(d) = json_diff(&want, &line["after"], &format!("insert u2 {}", want["id"])) {
            problems.push(d);
        }
    }
    assert!(problems.is_empty(), "{} value(s) differ:\n  {}", problems.len(), problems.join("\n  "));
    wc.stop().await;
    db.drop().await;
}
