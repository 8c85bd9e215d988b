//! Records handed to the producer (a full queue is waited out, never dropped) and their delivery
//! reports awaited: each failure is classified as dead letter, retry, fatal, or a producer to
//! replace, and the batch's outcome follows from the worst of them.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::client::{classify, Failure};
use super::producer::wait_fatal;
use super::render::{BatchWrite, Rec};
use super::{fatal_err, transient, KafkaSink, HEADER_COMMIT_LSN, HEADER_LSN};
use crate::sink::SinkError;

impl KafkaSink {
    /// Enqueue one record; waits while the producer's queue is full. `extra` is an additional
    /// header whose value is a range of the arena.
    pub(super) async fn send(&mut self, p: &mut BatchWrite, rec: Rec, extra: Option<(&str, Range<usize>)>) -> Result<(), SinkError> {
        let index = p.recs.len();
        if let Some((_, reason)) = self.missing_topics.get(&rec.topic) {
            p.dead.push((index, reason.clone()));
            p.recs.push(rec);
            return Ok(());
        }
        let lsn = rec.lsn.to_string();
        let commit_lsn = rec.commit_lsn.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header { key: HEADER_LSN, value: Some(lsn.as_str()) })
            .insert(Header { key: HEADER_COMMIT_LSN, value: Some(commit_lsn.as_str()) });
        if let Some((name, range)) = extra {
            headers = headers.insert(Header { key: name, value: Some(&p.arena[range]) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&rec.topic).headers(headers);
        if let Some(k) = &rec.key {
            record = record.key(&p.arena[k.clone()]);
        }
        if let Some(v) = &rec.value {
            record = record.payload(&p.arena[v.clone()]);
        }
        let outcome = loop {
            match self.producer.send_result(record) {
                Ok(future) => break Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // Backpressure: the producer buffers as much as queue_max_kbytes allows.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => break Err(e),
            }
        };
        match outcome {
            Ok(future) => p.futures.push((index, future)),
            Err(e) => match classify(&e, self.cfg.create_topics, &rec.topic, self.cfg.message_max_bytes) {
                Failure::DeadLetter(reason) => p.dead.push((index, reason)),
                Failure::Fatal(reason) => return Err(fatal_err(reason)),
                Failure::Replace(reason) => {
                    p.replace.get_or_insert(reason);
                }
                Failure::Retry(reason) => {
                    self.known_topics.remove(&rec.topic);
                    p.retry.get_or_insert(reason);
                }
            },
        }
        p.recs.push(rec);
        Ok(())
    }

    /// Wait for every delivery report of the batch.
    pub(super) async fn await_deliveries(&mut self, p: &mut BatchWrite) -> Result<(), SinkError> {
        let futures = std::mem::take(&mut p.futures);
        let mut fatal = self.fatal.clone();
        let all = async {
            let mut failed = Vec::new();
            for (index, future) in futures {
                match future.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((error, _))) => failed.push((index, Some(error))),
                    Err(_canceled) => failed.push((index, None)),
                }
            }
            failed
        };
        let failed = tokio::select! {
            failed = all => failed,
            () = wait_fatal(&mut fatal) => {
                self.check_producer().await?;
                return Err(transient("the producer reported an error".into()));
            }
        };
        for (index, error) in failed {
            let topic = &p.recs[index].topic;
            let failure = match &error {
                Some(e) => classify(e, self.cfg.create_topics, topic, self.cfg.message_max_bytes),
                None => Failure::Retry("the producer was closed".into()),
            };
            match failure {
                Failure::DeadLetter(reason) => p.dead.push((index, reason)),
                Failure::Fatal(reason) => return Err(fatal_err(reason)),
                Failure::Replace(reason) => {
                    p.replace.get_or_insert(reason);
                }
                Failure::Retry(reason) => {
                    if matches!(
                        error.as_ref().and_then(KafkaError::rdkafka_error_code),
                        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
                    ) {
                        // Created again (or looked up) before the retry.
                        let topic = Arc::clone(topic);
                        self.known_topics.remove(&topic);
                    }
                    p.retry.get_or_insert(reason);
                }
            }
        }
        let undelivered = p.recs.len() - p.dead.len();
        if let Some(reason) = p.replace.take() {
            self.replace_producer(&reason).await?;
            return Err(transient(format!("{undelivered} of {} records not delivered, the producer was replaced: {reason}", p.recs.len())));
        }
        match p.retry.take() {
            Some(reason) => {
                self.check_producer().await?;
                Err(transient(format!("{undelivered} of {} records not delivered: {reason}", p.recs.len())))
            }
            None => Ok(()),
        }
    }
}
