//! Routing: which destination each change goes to. For now the Kafka topic of each table
//! ([`topic`]); mapping rules for Elasticsearch documents come with their sink.

pub mod topic;

pub use topic::{TopicRouter, TopicTemplate};
