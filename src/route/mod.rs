//! Routing: which destination each change goes to. The Kafka topic of each table ([`topic`]);
//! Elasticsearch flat mapping rules ([`index`]) and document rules ([`document`]) producing sink
//! actions ([`action`]).

pub mod action;
pub mod document;
pub mod index;
mod index_time;
pub mod topic;

pub use action::{ChangeOrigin, EsAction, EsOp, Rejected};
pub use document::{DocumentRules, RuleWork};
pub use index::FlatRules;
pub use topic::TopicRouter;
