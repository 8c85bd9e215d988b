//! Kafka topic names: the template of `sinks.kafka.topic_template` (default
//! `{prefix}.{schema}.{table}`, Debezium's naming), parsed once at load, and Kafka's rules for a
//! complete topic name.

use std::fmt;

use serde::Deserialize;

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
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TopicTemplate {
    text: String,
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
        Ok(Self { text: template.to_string(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
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

impl TryFrom<String> for TopicTemplate {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl fmt::Debug for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Check a complete topic name against Kafka's rules.
pub(super) fn validate_topic_name(name: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_is_debezium_naming() {
        let t = TopicTemplate::parse("{prefix}.{schema}.{table}").expect("valid");
        assert_eq!(t.render("walcast", "app", "public", "orders"), "walcast.public.orders");
        assert_eq!(t.render("p", "app", "my schema", "tä"), "p.my_schema.t_");
        assert_eq!(t.as_str(), "{prefix}.{schema}.{table}");
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
    fn topic_name_rules() {
        assert!(validate_topic_name("walcast.public.orders").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
