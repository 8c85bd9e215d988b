//! walcast: stream Postgres row changes from a logical replication slot to sinks, confirming the
//! slot only once every sink made a change durable. See ARCHITECTURE.md for the map.

pub mod changelog;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod decode;
pub mod demo;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod lsn;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod replay;
pub mod retry;
pub mod route;
pub mod sink;
pub mod snapshot;
pub mod source;
mod state_file;
pub mod telemetry;
