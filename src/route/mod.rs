//! Routing: which destination each change goes to. The Kafka topic of each table ([`topic`]);
//! Elasticsearch flat mapping rules ([`index`]) producing sink actions ([`action`]).

pub mod action;
pub mod index;
pub mod topic;

pub use action::{EsAction, EsOp, Origin, Rejected};
pub use index::FlatRules;
pub use topic::{TopicRouter, TopicTemplate};
