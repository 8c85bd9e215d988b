//! Kafka topic names: a template (default `{prefix}.{schema}.{table}`, Debezium's naming) with
//! per-table overrides.

use std::collections::HashMap;
use std::sync::Arc;

use crate::decode::Relation;

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Prefix,
    Database,
    Schema,
    Table,
}

/// A parsed topic template. Placeholders: `{prefix}`, `{database}`, `{schema}`, `{table}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

impl TopicTemplate {
    /// Parse a template; the error says what is wrong (unknown placeholder, stray brace, a
    /// character Kafka does not allow in topic names).
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_string()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(format!("unmatched `}}` in {template:?}"));
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].to_string()));
                    }
                    let after = &rest[i + 1..];
                    let end = after.find('}').ok_or_else(|| format!("unclosed `{{` in {template:?}"))?;
                    parts.push(match &after[..end] {
                        "prefix" => Part::Prefix,
                        "database" => Part::Database,
                        "schema" => Part::Schema,
                        "table" => Part::Table,
                        other => {
                            return Err(format!(
                                "unknown placeholder {{{other}}} in {template:?}; use {{prefix}}, {{database}}, {{schema}}, {{table}}"
                            ))
                        }
                    });
                    rest = &after[end + 1..];
                }
            }
        }
        if parts.is_empty() {
            return Err("must not be empty".into());
        }
        for p in &parts {
            if let Part::Literal(text) = p {
                if let Some(c) = text.chars().find(|&c| !is_topic_char(c)) {
                    return Err(format!("{c:?} is not allowed in Kafka topic names (only ASCII letters, digits, '.', '_' and '-')"));
                }
            }
        }
        Ok(Self { parts })
    }

    /// The topic for one table. Characters Kafka does not allow (anything but ASCII letters,
    /// digits, `.`, `_`, `-`) in the substituted names become `_`, as Debezium does.
    pub fn render(&self, prefix: &str, database: &str, schema: &str, table: &str) -> String {
        let mut out = String::with_capacity(prefix.len() + schema.len() + table.len() + 8);
        for p in &self.parts {
            let value = match p {
                Part::Literal(text) => {
                    out.push_str(text);
                    continue;
                }
                Part::Prefix => prefix,
                Part::Database => database,
                Part::Schema => schema,
                Part::Table => table,
            };
            out.extend(value.chars().map(|c| if is_topic_char(c) { c } else { '_' }));
        }
        out
    }
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Check a complete topic name against Kafka's rules.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a topic name must not be empty".into());
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(format!("topic name {name:?} is longer than {MAX_TOPIC_LEN} characters"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid topic name"));
    }
    if let Some(c) = name.chars().find(|&c| !is_topic_char(c)) {
        return Err(format!("topic name {name:?} contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

/// Maps each relation to its topic, with a cache keyed by relation OID (a renamed table gets its
/// new name's topic).
#[derive(Debug)]
pub struct TopicRouter {
    template: TopicTemplate,
    prefix: String,
    database: String,
    /// `(schema, table)` -> topic, from the per-table settings.
    overrides: HashMap<(String, String), Arc<str>>,
    cache: HashMap<u32, Cached>,
}

#[derive(Debug)]
struct Cached {
    schema: String,
    table: String,
    topic: Arc<str>,
}

impl TopicRouter {
    /// A router for `database`'s tables. `overrides` maps `(schema, table)` to a fixed topic.
    pub fn new(
        template: TopicTemplate,
        prefix: &str,
        database: &str,
        overrides: impl IntoIterator<Item = ((String, String), String)>,
    ) -> Self {
        Self {
            template,
            prefix: prefix.to_string(),
            database: database.to_string(),
            overrides: overrides.into_iter().map(|(k, v)| (k, Arc::from(v))).collect(),
            cache: HashMap::new(),
        }
    }

    /// The topic of a table given by name.
    pub fn topic_for_name(&self, schema: &str, table: &str) -> Arc<str> {
        if let Some(t) = self.overrides.get(&(schema.to_string(), table.to_string())) {
            return Arc::clone(t);
        }
        let name = self.template.render(&self.prefix, &self.database, schema, table);
        Arc::from(truncate_topic(name))
    }

    /// The topic of a relation (cached).
    pub fn topic(&mut self, rel: &Relation) -> Arc<str> {
        if let Some(c) = self.cache.get(&rel.oid) {
            if c.schema == rel.schema && c.table == rel.table {
                return Arc::clone(&c.topic);
            }
        }
        let topic = self.topic_for_name(&rel.schema, &rel.table);
        self.cache.insert(rel.oid, Cached { schema: rel.schema.clone(), table: rel.table.clone(), topic: Arc::clone(&topic) });
        topic
    }
}

/// Keep a generated name within Kafka's length limit (a very long schema + table name).
fn truncate_topic(mut name: String) -> String {
    if name.len() > MAX_TOPIC_LEN {
        // Only ASCII remains after substitution, so any byte index is a char boundary.
        name.truncate(MAX_TOPIC_LEN);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::ReplicaIdentity;

    fn rel(oid: u32, schema: &str, table: &str) -> Relation {
        Relation { oid, schema: schema.into(), table: table.into(), replica_identity: ReplicaIdentity::Default, columns: vec![] }
    }

    #[test]
    fn default_template_is_debezium_naming() {
        let t = TopicTemplate::parse("{prefix}.{schema}.{table}").expect("valid");
        assert_eq!(t.render("walcast", "app", "public", "orders"), "walcast.public.orders");
        assert_eq!(t.render("p", "app", "my schema", "tä"), "p.my_schema.t_");
        let t = TopicTemplate::parse("cdc-{database}_{table}").expect("valid");
        assert_eq!(t.render("p", "app", "public", "orders"), "cdc-app_orders");
    }

    #[test]
    fn bad_templates_are_rejected() {
        assert!(TopicTemplate::parse("").is_err());
        assert!(TopicTemplate::parse("{prefix}.{tabel}").expect_err("unknown").contains("tabel"));
        assert!(TopicTemplate::parse("{prefix").is_err());
        assert!(TopicTemplate::parse("prefix}").is_err());
        assert!(TopicTemplate::parse("a b.{table}").is_err());
    }

    #[test]
    fn overrides_win_and_cache_follows_renames() {
        let t = TopicTemplate::parse("{prefix}.{schema}.{table}").expect("valid");
        let mut r = TopicRouter::new(t, "w", "app", [(("public".to_string(), "special".to_string()), "custom".to_string())]);
        assert_eq!(&*r.topic(&rel(1, "public", "orders")), "w.public.orders");
        assert_eq!(&*r.topic(&rel(2, "public", "special")), "custom");
        assert_eq!(&*r.topic(&rel(1, "public", "orders_v2")), "w.public.orders_v2");
    }

    #[test]
    fn topic_name_rules() {
        assert!(validate_topic_name("walcast.public.orders").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert_eq!(truncate_topic("y".repeat(300)).len(), MAX_TOPIC_LEN);
    }
}
