//! The producer's lifecycle: created from the config, checked for a fatal state before each
//! batch, replaced when it can never deliver again (fenced after a broker stall, or in a fatal
//! idempotence state).

use rdkafka::producer::Producer as _;
use rdkafka::ClientConfig;
use tokio::sync::watch;

use super::client::{self, Context};
use super::{fatal_err, transient, KafkaProducer, KafkaSink};
use crate::config::KafkaSinkConfig;
use crate::sink::SinkError;

impl KafkaSink {
    /// Stop on an authentication failure; replace a producer in a fatal state (asked directly:
    /// the notice of the client context only wakes a waiting write up sooner).
    pub(super) async fn check_producer(&mut self) -> Result<(), SinkError> {
        match self.producer.client().fatal_error() {
            Some((code, reason)) if client::is_auth_error(code) => Err(fatal_err(client::auth_message(&reason))),
            Some((code, reason)) => {
                let reason = format!("{code:?}: {reason}");
                self.replace_producer(&reason).await?;
                Err(transient(format!("the producer failed for good and was replaced: {reason}")))
            }
            None => match self.fatal.borrow().clone() {
                Some(notice) => Err(fatal_err(client::auth_message(&notice))),
                None => Ok(()),
            },
        }
    }

    /// Replace the producer with a new one (a new producer id): a fenced or failed idempotent
    /// producer never delivers again, however often the batch is retried. The caller then fails
    /// the batch, which is written again whole by the new producer (at-least-once: records the
    /// old one did deliver are duplicated, as after a crash). The old producer is destroyed
    /// first, purging what it still holds and closing its connections, so nothing it had in
    /// flight can land after the new producer's records of the same keys.
    pub(super) async fn replace_producer(&mut self, reason: &str) -> Result<(), SinkError> {
        let (producer, fatal) = new_producer(&self.cfg)?;
        let old = std::mem::replace(&mut self.producer, producer);
        self.fatal = fatal;
        self.replacements += 1;
        if let Some(eos) = &mut self.eos {
            // The new producer's init_transactions aborts what the old one left open.
            eos.ready = false;
            eos.stale = true;
        }
        tracing::warn!(
            reason,
            replacements = self.replacements,
            "replacing the kafka producer (fenced or failed for good); the batch is written again"
        );
        // Destroying a producer purges and waits for its threads: not on the runtime thread.
        tokio::task::spawn_blocking(move || drop(old))
            .await
            .map_err(|e| fatal_err(format!("destroying the replaced Kafka producer failed: {e}")))
    }
}

/// Resolves once the client context reported a fatal error (never, after the producer is gone).
pub(super) async fn wait_fatal(rx: &mut watch::Receiver<Option<String>>) {
    loop {
        if rx.borrow_and_update().is_some() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A new idempotent producer, and the receiver of its fatal-error notices.
pub(super) fn new_producer(cfg: &KafkaSinkConfig) -> Result<(KafkaProducer, watch::Receiver<Option<String>>), SinkError> {
    let config: ClientConfig = client::producer_config(cfg).map_err(|e| fatal_err(e.to_string()))?;
    let (context, fatal) = Context::new(cfg);
    let producer = config
        .create_with_context(context)
        .map_err(|e| fatal_err(format!("cannot create the Kafka producer: {e}; check the [sinks.kafka] settings")))?;
    Ok((producer, fatal))
}
