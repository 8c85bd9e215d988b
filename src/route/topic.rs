//! The Kafka topic of each relation: the config's template (or a per-table override), cached per
//! relation OID.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{KafkaSinkConfig, TopicTemplate, MAX_TOPIC_LEN};
use crate::decode::Relation;

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
    /// A router for `database`'s tables, from the Kafka section (template, prefix, per-table
    /// topics).
    pub fn new(cfg: &KafkaSinkConfig, database: &str) -> Self {
        let overrides = cfg
            .tables
            .iter()
            .filter_map(|(name, t)| Some(((name.schema().to_string(), name.table().to_string()), Arc::from(t.topic.as_deref()?))))
            .collect();
        Self {
            template: cfg.topic_template.clone(),
            prefix: cfg.prefix.clone(),
            database: database.to_string(),
            overrides,
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
    fn overrides_win_and_cache_follows_renames() {
        let cfg: KafkaSinkConfig =
            toml::from_str("bootstrap_servers = \"h:9092\"\nprefix = \"w\"\n[tables.\"public.special\"]\ntopic = \"custom\"\n")
                .expect("kafka config");
        let mut r = TopicRouter::new(&cfg, "app");
        assert_eq!(&*r.topic(&rel(1, "public", "orders")), "w.public.orders");
        assert_eq!(&*r.topic(&rel(2, "public", "special")), "custom");
        assert_eq!(&*r.topic(&rel(1, "public", "orders_v2")), "w.public.orders_v2");
    }

    #[test]
    fn long_names_are_cut_to_kafkas_limit() {
        assert_eq!(truncate_topic("y".repeat(300)).len(), MAX_TOPIC_LEN);
    }
}
