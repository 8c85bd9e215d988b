//! What the streaming loop reads from: a replication session, and the slot that opens sessions
//! (and, once streaming ends, records the final position and explains a failure). The loop is
//! generic over both, so its unit tests script the server.

use std::future::Future;
use std::time::Duration;

use crate::config::Config;
use crate::lsn::Lsn;
use crate::snapshot::SnapshotState;
use crate::source::{self, connect_sql, ConnParams, ReplicationStream, SourceError, SourceEvent, StreamSettings};

/// One replication session: events in, confirmed LSN out.
pub(crate) trait ReplicationSession {
    /// The next event; `Ok(None)` when the server ended the stream. Cancel-safe: dropping the
    /// future loses no event.
    fn recv(&mut self) -> impl Future<Output = Result<Option<SourceEvent>, SourceError>>;

    /// Tell the server everything up to `lsn` is durable.
    fn confirm(&self, lsn: Lsn);

    /// End the session cleanly.
    fn stop(self) -> impl Future<Output = Result<(), SourceError>>;
}

/// Where replication sessions come from: the slot.
pub(crate) trait SessionSource {
    /// The sessions it opens.
    type Session: ReplicationSession;

    /// The server, for errors (`host:port/database`).
    fn target(&self) -> String;

    /// Start a session at `start` (the server starts at the slot's confirmed position if that is
    /// later, and resends every transaction after it).
    fn open(&mut self, start: Lsn) -> impl Future<Output = Result<Self::Session, SourceError>>;

    /// After the last session ended: make `confirmed` stick even if its last status update
    /// never went out.
    fn settle(&mut self, confirmed: Lsn) -> impl Future<Output = Result<(), SourceError>>;

    /// A non-retryable error ended streaming: the same error, or one that says what happened to
    /// the slot and the way back.
    fn explain(&mut self, error: SourceError) -> impl Future<Output = SourceError>;
}

impl ReplicationSession for ReplicationStream {
    async fn recv(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        ReplicationStream::recv(self).await
    }

    fn confirm(&self, lsn: Lsn) {
        ReplicationStream::confirm(self, lsn)
    }

    async fn stop(self) -> Result<(), SourceError> {
        ReplicationStream::stop(self).await
    }
}

/// The configured slot on the real server.
pub(super) struct SlotSessions<'a> {
    config: &'a Config,
    params: ConnParams,
}

impl<'a> SlotSessions<'a> {
    /// Sessions of `config.source.slot`.
    pub(super) fn new(config: &'a Config, params: ConnParams) -> Self {
        Self { config, params }
    }
}

impl SessionSource for SlotSessions<'_> {
    type Session = ReplicationStream;

    fn target(&self) -> String {
        self.params.display()
    }

    async fn open(&mut self, start: Lsn) -> Result<ReplicationStream, SourceError> {
        let src = &self.config.source;
        let settings = StreamSettings {
            slot: src.slot.clone(),
            publication: src.publication.clone(),
            start,
            status_interval: src.status_interval(),
            buffer_events: self.config.pipeline.source_buffer_events,
        };
        let stream = ReplicationStream::start(&self.params, &settings).await?;
        tracing::info!(target: "walcast::pipeline", slot = %src.slot, publication = %src.publication, %start, "streaming");
        Ok(stream)
    }

    /// The stream may close before its last status update went out; advancing the slot over
    /// SQL makes the final position stick either way.
    async fn settle(&mut self, confirmed: Lsn) -> Result<(), SourceError> {
        let slot = &self.config.source.slot;
        let client = connect_sql(&self.params).await?;
        for _ in 0..20 {
            let info = source::slot_info(&client, slot).await.map_err(|e| source::classify(&e, &self.params))?;
            let Some(info) = info else { return Ok(()) };
            // Never advance what is not a logical slot of ours (someone replaced it meanwhile).
            if info.problem(&self.config.source.database).is_some() {
                return Ok(());
            }
            if info.confirmed_flush_lsn.is_some_and(|c| c >= confirmed) {
                return Ok(());
            }
            if !info.active {
                client
                    .execute("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", &[slot, &confirmed.to_string()])
                    .await
                    .map_err(|e| source::classify(&e, &self.params))?;
                return Ok(());
            }
            // The walsender is still exiting.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(SourceError::Transient("the slot stayed active after the stream ended".into()))
    }

    /// A replication error that is not retryable may mean the slot was dropped or invalidated
    /// while streaming: then say so, with the way back, instead of the server's bare message.
    async fn explain(&mut self, error: SourceError) -> SourceError {
        let src = &self.config.source;
        let Ok(client) = connect_sql(&self.params).await else { return error };
        match source::slot_info(&client, &src.slot).await {
            Ok(None) => {
                let state = SnapshotState::load(&self.config.snapshot.state_dir, &src.slot).ok().flatten();
                match state.as_ref().and_then(SnapshotState::gone_slot) {
                    Some((problem, fix)) => SourceError::setup(format!("{problem} (streaming stopped: {error})"), fix),
                    None => error,
                }
            }
            Ok(Some(slot)) => {
                if let Some((problem, fix)) = slot.problem(&src.database) {
                    return SourceError::setup(format!("{problem} (streaming stopped: {error})"), fix);
                }
                let state = SnapshotState::load(&self.config.snapshot.state_dir, &src.slot).ok().flatten();
                let Ok(now) = source::publication_oid(&client, &src.publication).await else { return error };
                match state.as_ref().and_then(|s| s.replaced_publication(&src.publication, now)) {
                    Some((problem, fix)) => SourceError::setup(format!("{problem} (streaming stopped: {error})"), fix),
                    None => error,
                }
            }
            Err(_) => error,
        }
    }
}
