//! `[sinks.kafka] schemas = true, encoding = "debezium"` against the broker, on the 62-column
//! type table of `types_golden`:
//! - every record's key and value are Connect JSON `{"schema", "payload"}`; the key struct is
//!   `<prefix>.public.golden.Key`, the envelope `<prefix>.public.golden.Envelope` with `before`
//!   and `after` structs `<prefix>.public.golden.Value` and the `source` struct
//!   `io.debezium.connector.postgresql.Source`;
//! - each column's field schema equals the one written here by hand from Debezium's PostgreSQL
//!   data type mappings (defaults: `decimal.handling.mode=precise`, `time.precision.mode=adaptive`,
//!   `interval.handling.mode=numeric`), and each value of the typical row (and the edge values of
//!   the other rows) equals the documented encoding, value by value;
//! - a schema-driven consumer (`kafka_debezium_connect`) turns every value of every row back into
//!   Postgres's text and matches what Postgres prints, column by column. The documented losses
//!   are the only exceptions and are asserted as such: numeric NaN/Infinity become null in
//!   `precise` mode, intervals are approximate microseconds (compared with Debezium's formula
//!   computed by Postgres from the interval's fields), varbit keeps whole bytes;
//! - after `ALTER TABLE ... ADD COLUMN numeric(10,2)` the next record's schema has the new
//!   `Decimal` field (a new Relation message, a new schema);
//! - `skipped_operations = ["t"]`: a truncate publishes nothing.

use std::time::Duration;

use crate::kafka_debezium_connect::{field_to_pg, same_float};
use crate::support::kafka::*;
use crate::support::*;
use crate::types_golden::{ALL_BYTES_B64, ROW_HIGH, ROW_LOW, ROW_TYPICAL, SCHEMA};
use serde_json::{json, Map, Value};

/// (column, type as declared) in table order.
fn columns() -> Vec<(String, String)> {
    SCHEMA
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("c_") || l.starts_with("id "))
        .map(|l| {
            let (name, ty) = l.split_once(' ').expect("column line");
            let ty = ty.trim_end_matches(',').trim_end_matches(" PRIMARY KEY");
            (name.to_string(), ty.to_string())
        })
        .collect()
}

fn named(ty: &str, name: &str) -> Value {
    json!({"type": ty, "name": name, "version": 1})
}

/// The field schema Debezium documents for a column type (without `optional` and `field`).
fn expected_type_schema(ty: &str) -> Value {
    if let Some(elem) = ty.strip_suffix("[][]").or_else(|| ty.strip_suffix("[]")) {
        let mut items = expected_type_schema(elem);
        items["optional"] = json!(true);
        return json!({"type": "array", "items": items});
    }
    match ty {
        "int4" | "posint" => json!({"type": "int32"}),
        "bool" => json!({"type": "boolean"}),
        "int2" => json!({"type": "int16"}),
        "int8" | "oid" => json!({"type": "int64"}),
        "float4" => json!({"type": "float"}),
        "float8" => json!({"type": "double"}),
        "numeric" => json!({"type": "struct", "name": "io.debezium.data.VariableScaleDecimal", "version": 1,
            "doc": "Variable scaled decimal",
            "fields": [{"type": "int32", "optional": false, "field": "scale"}, {"type": "bytes", "optional": false, "field": "value"}]}),
        "numeric(10, 2)" => json!({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
            "parameters": {"scale": "2", "connect.decimal.precision": "10"}}),
        "money" => json!({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1, "parameters": {"scale": "2"}}),
        "uuid" => named("string", "io.debezium.data.Uuid"),
        "json" | "jsonb" => named("string", "io.debezium.data.Json"),
        "xml" => named("string", "io.debezium.data.Xml"),
        "bytea" => json!({"type": "bytes"}),
        "date" => named("int32", "io.debezium.time.Date"),
        "time" => named("int64", "io.debezium.time.MicroTime"),
        "timetz" => named("string", "io.debezium.time.ZonedTime"),
        "timestamp" => named("int64", "io.debezium.time.MicroTimestamp"),
        "timestamptz" => named("string", "io.debezium.time.ZonedTimestamp"),
        "interval" => named("int64", "io.debezium.time.MicroDuration"),
        "bit(8)" => json!({"type": "bytes", "name": "io.debezium.data.Bits", "version": 1, "parameters": {"length": "8"}}),
        "varbit" => json!({"type": "bytes", "name": "io.debezium.data.Bits", "version": 1, "parameters": {"length": "2147483647"}}),
        "point" => json!({"type": "struct", "name": "io.debezium.data.geometry.Point", "version": 1, "doc": "Geometry (POINT)",
            "fields": [{"type": "double", "optional": false, "field": "x"}, {"type": "double", "optional": false, "field": "y"},
                       {"type": "bytes", "optional": true, "field": "wkb"}, {"type": "int32", "optional": true, "field": "srid"}]}),
        // Text types, enums (walcast sees them as text), ranges, network, geometric types other
        // than point, bit strings' cousins, tsvector, composites: strings.
        _ => json!({"type": "string"}),
    }
}

fn vsd(scale: i64, value: &str) -> Value {
    json!({"scale": scale, "value": value})
}

/// Row 1 as Debezium encodes it by default.
fn expected_typical() -> Value {
    json!({
        "id": 1, "c_bool": true, "c_int2": 12345, "c_int4": -42, "c_int8": 1234567890123_i64,
        "c_numeric": vsd(10, "CHJ/Y2mq+DyhUCZ0evjH8ZaMBNUV"),
        "c_float4": 1.1, "c_float8": 0.30000000000000004,
        "c_text": "quote \" backslash \\ newline \n tab \t cr \r bell \u{7} slash / end",
        "c_varchar": "héllo wörl", "c_char": "ab   ", "c_name": "pg_name",
        "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "c_json": "{\"b\": [1, 2.5, \"x\"],\n \"a\": null, \"esc\": \"\\u00e9\\n\", \"s\": \"ünï \\\"q\\\"\"}",
        "c_jsonb": "{\"n\": 12.50, \"s\": \"日本\", \"nested\": {\"t\": true, \"arr\": []}}",
        "c_bytea": ALL_BYTES_B64,
        "c_date": 19782,
        "c_time": 47_655_123_456_i64,
        "c_timetz": "07:04:56Z",
        "c_timestamp": 1_709_212_455_123_456_i64,
        "c_timestamptz": "2024-02-29T11:14:15.5Z",
        "c_interval": 37_091_106_000_000_i64,
        "c_int4_arr": [1, 2, null, -3],
        "c_int4_2d": [1, 2, 3, 4],
        "c_int8_arr": [i64::MAX, i64::MIN],
        "c_text_arr": ["a b", "with \"quote\"", "back\\slash", null, "NULL", "", "x,y", "{z}", "ünï", "line\nbreak"],
        "c_varchar_arr": ["v1", "v 2"],
        "c_numeric_arr": [vsd(2, "AJY="), null, vsd(3, "/w==")],
        "c_float8_arr": ["NaN", 1.5, "-Infinity", "Infinity"],
        "c_jsonb_arr": ["{\"a\": 1}", "[1, 2]", "\"s\"", "{\"q\": \"x\\\"y\"}", null],
        "c_bool_arr": [true, false, null],
        "c_date_arr": [19723, i32::MAX, -735_160],
        "c_tstz_arr": ["2024-01-01T00:00:00Z", "infinity", "2024-06-01T10:30:00Z"],
        "c_interval_arr": [86_400_000_000_i64, 3_600_000_000_i64],
        "c_uuid_arr": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"],
        "c_bytea_arr": ["AQI=", ""],
        "c_box_arr": ["(1,1),(0,0)", "(3,3),(2,2)"],
        "c_mood": "happy",
        "c_int4range": "[2,11)", "c_numrange": "[1.5,2.5]",
        "c_tsrange": "[\"2024-01-01 00:00:00\",\"2024-01-02 00:00:00\")",
        "c_tstzrange": "[\"2024-01-01 00:00:00+00\",)", "c_daterange": "[2024-01-01,2024-02-02)",
        "c_inet": "192.168.0.1/24", "c_cidr": "10.0.0.0/8",
        "c_macaddr": "08:00:2b:01:02:03", "c_macaddr8": "08:00:2b:01:02:03:04:05",
        "c_money": "AeJA",
        "c_bit": "qg==", "c_varbit": "BQ==",
        "c_xml": "<a attr=\"1\">x &amp; y</a>",
        "c_tsvector": "'a' 'cat' 'fat' 'mat' 'on' 'sat'",
        "c_point": {"x": 1.5, "y": -2.0, "wkb": "AQEAAAAAAAAAAAD4PwAAAAAAAADA", "srid": null},
        "c_line": "{1,-1,0}", "c_lseg": "[(0,0),(1,1)]", "c_box": "(1,1),(0,0)",
        "c_path": "[(0,0),(1,1),(2,0)]", "c_polygon": "((0,0),(1,1),(1,0))", "c_circle": "<(0,0),1.5>",
        "c_oid": 12345, "c_domain": 42, "c_composite": "(1,\"x y\")"
    })
}

/// The documented edge encodings of rows 3 and 4 (other columns are covered by the consumer).
fn expected_edges(id: i64) -> Value {
    match id {
        3 => json!({
            "c_numeric": null, "c_float4": "NaN", "c_float8": "-Infinity", "c_date": -735_160,
            "c_time": 0, "c_timetz": "20:00:00Z", "c_timestamp": -9_223_372_036_832_400_000_i64,
            "c_timestamptz": "-0043-03-15T12:00:00Z", "c_interval": -79_199_500_000_i64,
            "c_int4_2d": [1, 2, 3, 4], "c_money": "/2o=", "c_bit": "AA==", "c_varbit": "", "c_jsonb": "[]",
            "c_json": "\"just a string\"", "c_tstz_arr": ["-infinity"], "c_bool_arr": [null]
        }),
        4 => json!({
            "c_numeric": null, "c_time": 86_400_000_000_i64, "c_timetz": "01:02:03Z",
            "c_timestamp": 9_223_372_036_825_200_000_i64, "c_timestamptz": "infinity", "c_interval": 0,
            "c_date": i32::MAX, "c_date_arr": [-719_528], "c_int4_arr": [7, 8], "c_float8": -0.0,
            "c_numeric_arr": [vsd(3, "AA=="), vsd(1, "BQ==")], "c_oid": 4_294_967_295_u32, "c_jsonb": "42"
        }),
        _ => json!({}),
    }
}

/// SQL giving Postgres's text of one value of type `ty` (the form the consumer rebuilds).
fn canonical_sql(ty: &str, e: &str) -> String {
    if let Some(elem) = ty.strip_suffix("[][]").or_else(|| ty.strip_suffix("[]")) {
        return format!(
            "CASE WHEN {e} IS NULL THEN NULL ELSE array_to_json(array(SELECT {} FROM unnest({e}) x)) END",
            canonical_sql(elem, "x")
        );
    }
    match ty {
        "timetz" => format!("to_json(({e} AT TIME ZONE 'UTC')::text)"),
        "money" => format!("to_json({e}::numeric::text)"),
        // Debezium's MicroDuration, from the interval's own fields (exact numeric arithmetic).
        "interval" => format!(
            "to_json(trunc(((extract(year FROM {e}) * 12 + extract(month FROM {e})) * 30.4375 + extract(day FROM {e})) * 86400000000 \
             + extract(hour FROM {e}) * 3600000000 + extract(minute FROM {e}) * 60000000 + extract(second FROM {e}) * 1000000)::text)"
        ),
        // Bits carry whole bytes.
        "bit(8)" | "varbit" => format!("to_json(lpad({e}::text, ((length({e}) + 7) / 8) * 8, '0'))"),
        // precise mode has no form for NaN and infinities: null.
        "numeric" => format!("to_json(CASE WHEN {e}::text IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE {e}::text END)"),
        // The type's output function, as pgoutput sends it (a cast to text can differ: char(n)
        // drops trailing blanks, inet adds the netmask).
        _ => format!("to_json(CASE WHEN {e} IS NULL THEN NULL ELSE format('%s', {e}) END)"),
    }
}

async fn pg_texts(sql: &tokio_postgres::Client, id: i64, cols: &[(String, String)]) -> Map<String, Value> {
    let fields: Vec<String> = cols.iter().map(|(c, t)| format!("'{c}', {}", canonical_sql(t, c))).collect();
    // json_build_object takes at most 100 arguments: build it in chunks.
    let mut out = Map::new();
    for chunk in fields.chunks(40) {
        let q = format!("SELECT json_build_object({})::text FROM golden WHERE id = {id}", chunk.join(", "));
        let text = query_text(sql, &q).await.expect("row");
        let v: Value = serde_json::from_str(&text).expect("json");
        out.extend(v.as_object().expect("object").clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn schemas_and_debezium_encodings_match_the_documented_mapping() {
    let bootstrap = bootstrap();
    let db = TestDb::create("kafka_debezium").await;
    let sql = db.client().await;
    exec(&sql, SCHEMA).await;
    exec(&sql, "SET timezone = 'UTC'; SET datestyle = 'ISO, YMD'; SET bytea_output = 'hex'; SET extra_float_digits = 1").await;
    db.create_publication(&["golden"]).await;
    db.create_slot().await;
    let prefix = db.name.clone();
    let topic = format!("{prefix}.public.golden");
    let extra = kafka_section(&bootstrap, &prefix, "schemas = true\nencoding = \"debezium\"\nskipped_operations = [\"t\"]\n");
    let mut wc = Walcast::with_options(&db, &Options { extra, ..Options::default() });
    wc.start();
    wc.wait_streaming_slot(&db).await;

    exec(&sql, ROW_TYPICAL).await;
    exec(&sql, "INSERT INTO golden (id) VALUES (2)").await;
    exec(&sql, ROW_LOW).await;
    exec(&sql, ROW_HIGH).await;
    let cols = columns();
    assert_eq!(cols.len(), 62);
    let mut pg_rows = std::collections::BTreeMap::new();
    for id in 1..=4 {
        pg_rows.insert(id, pg_texts(&sql, id, &cols).await);
    }
    exec(&sql, "ALTER TABLE golden ADD COLUMN c_new numeric(10, 2); INSERT INTO golden (id, c_new) VALUES (5, 12.5)").await;
    exec(&sql, "TRUNCATE golden").await;
    exec(&sql, "INSERT INTO golden (id) VALUES (6)").await;

    let mut c = Collector::group(&bootstrap, &[&topic]);
    c.wait_until("six creates", WAIT, |r| r.len() >= 6);
    c.poll_for(Duration::from_secs(1));
    let recs = c.topic(&topic);
    let ops: Vec<&str> = recs.iter().map(|r| r.value.as_ref().and_then(|v| v["payload"]["op"].as_str()).unwrap_or("-")).collect();
    assert_eq!(ops, ["c"; 6], "six creates and no truncate record (skipped_operations)");

    let mut problems = Vec::new();
    for rec in &recs[..4] {
        let key = rec.key.as_ref().expect("key");
        let value = rec.value.as_ref().expect("value");
        let id = key["payload"]["id"].as_i64().expect("key id");
        assert_eq!(
            key["schema"],
            json!({"type": "struct", "optional": false, "name": format!("{prefix}.public.golden.Key"),
                   "fields": [{"type": "int32", "optional": false, "field": "id"}]}),
            "key schema"
        );
        let schema = &value["schema"];
        assert_eq!((&schema["name"], &schema["type"]), (&json!(format!("{prefix}.public.golden.Envelope")), &json!("struct")));
        let fields = schema["fields"].as_array().expect("envelope fields");
        let by_name = |n: &str| fields.iter().find(|f| f["field"] == n).unwrap_or_else(|| panic!("no envelope field {n}"));
        assert_eq!(by_name("source")["name"], "io.debezium.connector.postgresql.Source");
        for f in ["op", "ts_ms", "transaction"] {
            by_name(f);
        }
        let after_schema = by_name("after");
        assert_eq!((&after_schema["name"], &after_schema["optional"]), (&json!(format!("{prefix}.public.golden.Value")), &json!(true)));
        assert_eq!(by_name("before")["name"], after_schema["name"]);
        let payload = &value["payload"];
        check_debezium_envelope(payload).unwrap_or_else(|e| panic!("{e}"));
        // The schema describes the payload: every source field is declared.
        let source_fields: Vec<&str> =
            by_name("source")["fields"].as_array().expect("fields").iter().filter_map(|f| f["field"].as_str()).collect();
        for k in payload["source"].as_object().expect("source").keys() {
            assert!(source_fields.contains(&k.as_str()), "source.{k} is not in the source schema");
        }

        let field_schemas = after_schema["fields"].as_array().expect("after fields");
        assert_eq!(field_schemas.len(), 62);
        let after = payload["after"].as_object().expect("after");
        let pg = &pg_rows[&id];
        for ((col, ty), fs) in cols.iter().zip(field_schemas) {
            // 1. The schema, as documented.
            let mut want = expected_type_schema(ty);
            want["optional"] = json!(col != "id");
            want["field"] = json!(col);
            if let Some(d) = json_diff(&want, fs, &format!("schema of {col} ({ty})")) {
                problems.push(d);
            }
            // 2. The value, as documented.
            let got = after.get(col).unwrap_or_else(|| panic!("row {id}: no {col}"));
            let documented = match id {
                1 => expected_typical().get(col).cloned(),
                2 if col != "id" => Some(Value::Null),
                _ => expected_edges(id).get(col).cloned(),
            };
            if let Some(want) = documented {
                if let Some(d) = json_diff(&want, got, &format!("row {id} {col}")) {
                    problems.push(d);
                }
            }
            // 3. Read back through the schema, it is what Postgres holds.
            let back = field_to_pg(fs, got);
            let want = pg.get(col).unwrap_or_else(|| panic!("postgres has no {col}"));
            let same = match (want, &back) {
                (Value::String(a), Value::String(b)) if ty.starts_with("float") => same_float(a, b),
                (Value::Array(a), Value::Array(b)) if ty.starts_with("float") => {
                    a.len() == b.len()
                        && a.iter().zip(b).all(|(x, y)| match (x, y) {
                            (Value::String(x), Value::String(y)) => same_float(x, y),
                            (x, y) => x == y,
                        })
                }
                _ => want == &back,
            };
            if !same {
                problems.push(format!("row {id} {col} ({ty}): the consumer read {back} from {got}, postgres has {want}"));
            }
        }
    }
    assert!(problems.is_empty(), "{} difference(s):\n  {}", problems.len(), problems.join("\n  "));

    // A schema change: the next record is described by the new Relation message.
    let v5 = recs[4].value.as_ref().expect("value");
    assert_eq!(v5["payload"]["after"]["c_new"], "BOI=", "12.5 at scale 2 is unscaled 1250");
    let after5 = v5["schema"]["fields"].as_array().expect("fields").iter().find(|f| f["field"] == "after").expect("after").clone();
    let new_field =
        after5["fields"].as_array().expect("fields").iter().find(|f| f["field"] == "c_new").expect("c_new in the schema").clone();
    let mut want = expected_type_schema("numeric(10, 2)");
    want["optional"] = json!(true);
    want["field"] = json!("c_new");
    assert_json_eq(&want, &new_field, "schema of the added column");
    assert_eq!(after5["fields"].as_array().map(Vec::len), Some(63));

    wc.stop().await;
    db.drop().await;
}
