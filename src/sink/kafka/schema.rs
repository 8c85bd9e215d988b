//! Kafka Connect schemas of the records, as the JSON converter writes them with
//! `schemas.enable=true`: `{"schema": ..., "payload": ...}`. A table's key and envelope schemas
//! follow from its relation description (a new Relation message after a schema change gives a
//! new one) and the value encodings; they are rendered once per description and cached.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::encoding::{kind, Kind};
use crate::config::ValueEncoding;
use crate::decode::{array_element, Column, Relation};

/// Name of the `source` struct.
const SOURCE_NAME: &str = "io.debezium.connector.postgresql.Source";
/// Values Debezium allows in `source.snapshot`.
const SNAPSHOT_ALLOWED: &str = "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental";

fn schema_of(k: Kind) -> Map<String, Value> {
    let mut m = Map::new();
    let mut named = |ty: &str, name: Option<&str>| {
        m.insert("type".into(), json!(ty));
        if let Some(name) = name {
            m.insert("name".into(), json!(name));
            m.insert("version".into(), json!(1));
        }
    };
    match k {
        Kind::Plain { ty, name } => named(ty, name),
        Kind::Decimal { scale, precision } => {
            named("bytes", Some("org.apache.kafka.connect.data.Decimal"));
            let mut params = Map::new();
            params.insert("scale".into(), json!(scale.to_string()));
            if let Some(p) = precision {
                params.insert("connect.decimal.precision".into(), json!(p.to_string()));
            }
            m.insert("parameters".into(), Value::Object(params));
        }
        Kind::Money(mode) => {
            use crate::config::DecimalHandling;
            match mode {
                DecimalHandling::Precise => return schema_of(Kind::Decimal { scale: 2, precision: None }),
                DecimalHandling::Double => named("double", None),
                DecimalHandling::String => named("string", None),
            }
        }
        Kind::VariableDecimal => {
            named("struct", Some("io.debezium.data.VariableScaleDecimal"));
            m.insert(
                "fields".into(),
                json!([{"type": "int32", "optional": false, "field": "scale"}, {"type": "bytes", "optional": false, "field": "value"}]),
            );
            m.insert("doc".into(), json!("Variable scaled decimal"));
        }
        Kind::Double => named("double", None),
        Kind::DateDays { name } => named("int32", Some(name)),
        Kind::TimeMillis { name } => named("int32", Some(name)),
        Kind::TimeMicros => named("int64", Some("io.debezium.time.MicroTime")),
        Kind::TimestampMillis { name } => named("int64", Some(name)),
        Kind::TimestampMicros => named("int64", Some("io.debezium.time.MicroTimestamp")),
        Kind::TimetzUtc => named("string", Some("io.debezium.time.ZonedTime")),
        Kind::IntervalMicros => named("int64", Some("io.debezium.time.MicroDuration")),
        Kind::IntervalString => named("string", Some("io.debezium.time.Interval")),
        Kind::JsonString => named("string", Some("io.debezium.data.Json")),
        Kind::BitBool => named("boolean", None),
        Kind::Bits { length } => {
            named("bytes", Some("io.debezium.data.Bits"));
            m.insert("parameters".into(), json!({"length": length.to_string()}));
        }
        Kind::Point => {
            named("struct", Some("io.debezium.data.geometry.Point"));
            m.insert(
                "fields".into(),
                json!([
                    {"type": "double", "optional": false, "field": "x"},
                    {"type": "double", "optional": false, "field": "y"},
                    {"type": "bytes", "optional": true, "field": "wkb"},
                    {"type": "int32", "optional": true, "field": "srid"}
                ]),
            );
            m.insert("doc".into(), json!("Geometry (POINT)"));
        }
    }
    m
}

/// The field schema of a column. Key columns are required (a primary key is NOT NULL); the
/// others are optional (pgoutput does not say which columns are NOT NULL).
fn column_field(col: &Column, enc: &ValueEncoding) -> Value {
    let mut m = match array_element(col.type_oid) {
        Some((elem, _)) => {
            let mut items = schema_of(kind(elem, col.type_modifier, enc));
            items.insert("optional".into(), json!(true));
            let mut m = Map::new();
            m.insert("type".into(), json!("array"));
            m.insert("items".into(), Value::Object(items));
            m
        }
        None => schema_of(kind(col.type_oid, col.type_modifier, enc)),
    };
    m.insert("optional".into(), json!(!col.key));
    m.insert("field".into(), json!(col.name));
    Value::Object(m)
}

fn row_struct(rel: &Relation, cols: &[usize], name: String, enc: &ValueEncoding) -> Map<String, Value> {
    let fields: Vec<Value> = cols.iter().filter_map(|&i| rel.columns.get(i)).map(|c| column_field(c, enc)).collect();
    let mut m = Map::new();
    m.insert("type".into(), json!("struct"));
    m.insert("fields".into(), Value::Array(fields));
    m.insert("optional".into(), json!(false));
    m.insert("name".into(), json!(name));
    m
}

/// `<prefix>.<schema>.<table>`: the start of the struct names.
fn base_name(prefix: &str, rel: &Relation) -> String {
    format!("{prefix}.{}.{}", rel.schema, rel.table)
}

/// The key schema: a struct `<prefix>.<schema>.<table>.Key` of the key columns, all required.
pub(super) fn key_schema(rel: &Relation, key_cols: &[usize], prefix: &str, enc: &ValueEncoding) -> Value {
    let mut m = row_struct(rel, key_cols, format!("{}.Key", base_name(prefix, rel)), enc);
    if let Some(Value::Array(fields)) = m.get_mut("fields") {
        for f in fields {
            f["optional"] = json!(false);
        }
    }
    Value::Object(m)
}

/// The `source` field of envelopes (also of message events).
pub(super) fn source_schema() -> Value {
    let f = |ty: &str, optional: bool, field: &str| json!({"type": ty, "optional": optional, "field": field});
    json!({
        "type": "struct",
        "fields": [
            f("string", false, "version"),
            f("string", false, "connector"),
            f("string", false, "name"),
            f("int64", false, "ts_ms"),
            {"type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1,
             "parameters": {"allowed": SNAPSHOT_ALLOWED}, "default": "false", "field": "snapshot"},
            f("string", false, "db"),
            f("string", true, "sequence"),
            f("int64", true, "ts_us"),
            f("int64", true, "ts_ns"),
            f("string", false, "schema"),
            f("string", false, "table"),
            f("int64", true, "txId"),
            f("int64", true, "lsn"),
            f("int64", true, "xmin"),
            f("string", true, "change_id"),
        ],
        "optional": false,
        "name": SOURCE_NAME,
        "field": "source"
    })
}

/// The value schema: the envelope `<prefix>.<schema>.<table>.Envelope` with `before`/`after`
/// structs `<prefix>.<schema>.<table>.Value`.
pub(super) fn value_schema(rel: &Relation, prefix: &str, enc: &ValueEncoding) -> Value {
    let base = base_name(prefix, rel);
    let all: Vec<usize> = (0..rel.columns.len()).collect();
    let row = |field: &str| {
        let mut m = row_struct(rel, &all, format!("{base}.Value"), enc);
        m.insert("optional".into(), json!(true));
        m.insert("field".into(), json!(field));
        Value::Object(m)
    };
    let f = |ty: &str, optional: bool, field: &str| json!({"type": ty, "optional": optional, "field": field});
    json!({
        "type": "struct",
        "fields": [
            row("before"),
            row("after"),
            source_schema(),
            {"type": "struct", "fields": [f("string", false, "id"), f("int64", false, "total_order"),
             f("int64", false, "data_collection_order")], "optional": true, "name": "event.block", "version": 1,
             "field": "transaction"},
            f("string", false, "op"),
            f("int64", true, "ts_ms"),
            f("int64", true, "ts_us"),
            f("int64", true, "ts_ns"),
        ],
        "optional": false,
        "name": format!("{base}.Envelope"),
        "version": 2
    })
}

/// Key schema of the transaction topic's records.
pub(super) fn tx_key_schema() -> Value {
    json!({"type": "struct", "fields": [{"type": "string", "optional": false, "field": "id"}], "optional": false,
           "name": "io.debezium.connector.common.TransactionMetadataKey"})
}

/// Value schema of the transaction topic's BEGIN and END records.
pub(super) fn tx_value_schema() -> Value {
    json!({"type": "struct", "fields": [
        {"type": "string", "optional": false, "field": "status"},
        {"type": "string", "optional": false, "field": "id"},
        {"type": "int64", "optional": true, "field": "event_count"},
        {"type": "array", "items": {"type": "struct", "fields": [
            {"type": "string", "optional": false, "field": "data_collection"},
            {"type": "int64", "optional": false, "field": "event_count"}], "optional": false},
         "optional": true, "field": "data_collections"},
        {"type": "int64", "optional": false, "field": "ts_ms"}],
        "optional": false, "name": "io.debezium.connector.common.TransactionMetadataValue", "version": 1})
}

/// The rendered `{"schema":S,"payload":` prefix of a key or value (the payload and `}` follow).
pub(super) fn prefix_of(schema: &Value) -> Arc<[u8]> {
    let mut out = b"{\"schema\":".to_vec();
    // Serializing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, schema);
    out.extend_from_slice(b",\"payload\":");
    Arc::from(out)
}

/// Rendered schema prefixes of one relation description.
#[derive(Clone)]
pub(super) struct RelationSchemas {
    /// `{"schema":<key schema>,"payload":`.
    pub key: Arc<[u8]>,
    /// `{"schema":<envelope schema>,"payload":`.
    pub value: Arc<[u8]>,
}

/// The description and key columns schemas were rendered from, and the schemas.
type Rendered = (Arc<Relation>, Arc<[usize]>, RelationSchemas);

/// Schemas per relation OID, for the description (and key columns) they were rendered from.
#[derive(Default)]
pub(super) struct SchemaCache {
    by_oid: HashMap<u32, Rendered>,
}

impl SchemaCache {
    /// The schemas of `rel` keyed by `key_cols`, rendered on first use of a description.
    pub(super) fn get(&mut self, rel: &Arc<Relation>, key_cols: &Arc<[usize]>, prefix: &str, enc: &ValueEncoding) -> RelationSchemas {
        if let Some((r, k, s)) = self.by_oid.get(&rel.oid) {
            if Arc::ptr_eq(r, rel) && Arc::ptr_eq(k, key_cols) {
                return s.clone();
            }
        }
        let s =
            RelationSchemas { key: prefix_of(&key_schema(rel, key_cols, prefix, enc)), value: prefix_of(&value_schema(rel, prefix, enc)) };
        self.by_oid.insert(rel.oid, (Arc::clone(rel), Arc::clone(key_cols), s.clone()));
        s
    }
}
