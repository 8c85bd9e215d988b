//! walcast's integration tests in one binary, linked once with walcast and librdkafka: a module
//! per area (`cargo test --release --test it crash::` runs one) and `support`, shared by all.
//! They run the real binary against the servers `scripts/test-env` starts. Every test has its
//! own database, slot, index and topics, so tests run in parallel (`scripts/test`: 3 threads);
//! the few that must not overlap take a lock: the chaos cluster's (`support::chaos`) or
//! `wal_heavy` (`support::pg`).
// types_golden's json! of every type nests deeply.
#![recursion_limit = "256"]

mod support;

mod auth;
mod big_tx;
mod changelog_corrupt;
mod changelog_crash;
mod changelog_decoupled;
mod changelog_strict;
mod check;
mod crash;
mod dashboard;
mod es_dead_letter;
mod es_flat;
mod es_outage;
mod es_refresh;
mod es_resync;
mod es_telemetry;
mod es_tls;
mod es_versions;
mod ha;
mod huge_value;
mod identity_full;
mod kafka_broker_down;
mod kafka_check;
mod kafka_crash;
mod kafka_debezium;
mod kafka_debezium_connect;
mod kafka_debezium_eos;
mod kafka_envelope_fields;
mod kafka_errors;
mod kafka_messages;
mod kafka_ops;
mod kafka_order;
mod kafka_snapshot;
mod kafka_stall;
mod metrics_prometheus;
mod movies_faults;
mod movies_snapshot;
mod movies_streaming;
mod operator_logs;
mod packaging;
mod pg_restart;
mod quiet_slot;
mod replay;
mod replay_kafka;
mod replay_movies;
mod resume;
mod schema_change;
mod shards;
mod shutdown_stuck_sink;
mod slot_lifecycle;
mod snapshot;
mod snapshot_progress;
mod snapshot_recheck;
mod stream_ops;
mod tls;
mod toast;
mod types_golden;
mod value_roundtrip;
