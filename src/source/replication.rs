//! The replication connection: START_REPLICATION on the slot, events in, confirmed LSN out.
//! Transport, authentication, keepalive replies and standby status updates are done by the
//! `pgwire-replication` crate; this module adapts its events and classifies its errors.

use bytes::Bytes;
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};

use super::{find_cause, ConnParams, SourceError, Step, SESSION_OPTIONS};
use crate::config::SslMode;
use crate::decode::{Begin, Commit, LogicalMessage};
use crate::lsn::Lsn;

/// One event from the replication stream, in stream order.
#[derive(Debug)]
pub enum SourceEvent {
    /// A transaction starts.
    Begin(Begin),
    /// A pgoutput message other than Begin/Commit/Message, still encoded (decode parses it).
    Data {
        /// WAL position of the record the message came from.
        wal_start: Lsn,
        /// The pgoutput message bytes.
        payload: Bytes,
    },
    /// A transaction committed.
    Commit(Commit),
    /// A logical decoding message.
    Message(LogicalMessage),
    /// The server has sent everything up to `wal_end`.
    KeepAlive {
        /// Server WAL position.
        wal_end: Lsn,
    },
}

/// Settings of one replication session.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Slot to stream.
    pub slot: String,
    /// Publication to decode for.
    pub publication: String,
    /// Where to start (the server starts at max(this, confirmed_flush_lsn)).
    pub start: Lsn,
    /// Standby status update interval.
    pub status_interval: std::time::Duration,
    /// Events buffered between the socket reader and the decoder.
    pub buffer_events: usize,
}

/// A running replication session.
pub struct ReplicationStream {
    client: ReplicationClient,
    params: ConnParams,
}

impl ReplicationStream {
    /// Connect and start streaming; returns once the server accepted START_REPLICATION.
    pub async fn start(params: &ConnParams, settings: &StreamSettings) -> Result<Self, SourceError> {
        let cfg = session_config(params, &settings.slot, &settings.publication)
            .await?
            .with_start_lsn(settings.start.into())
            // Report only what walcast confirms, never the requested start.
            .with_ack_lsn(settings.start.into())
            .with_status_interval(settings.status_interval)
            .with_wakeup_interval(std::time::Duration::from_secs(10))
            .with_buffer_size(settings.buffer_events);
        // A gated session: IDENTIFY_SYSTEM first, so that an error says whether connecting or
        // START_REPLICATION failed (the same SQLSTATE means different things at each).
        let mut client = ReplicationClient::connect_gated(cfg).await.map_err(|e| classify(&e, params, Step::Connect))?;
        let started = async {
            client.identify_system().await.map_err(|e| classify(&e, params, Step::Connect))?;
            client.start().await.map_err(|e| classify(&e, params, Step::StartReplication))?;
            client.wait_started().await.map_err(|e| classify(&e, params, Step::StartReplication))
        };
        match tokio::time::timeout(params.connect_timeout, started).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                client.abort();
                return Err(SourceError::Connection {
                    target: params.display(),
                    reason: format!("START_REPLICATION not accepted within {} ms", params.connect_timeout.as_millis()),
                });
            }
        }
        Ok(Self { client, params: params.clone() })
    }

    /// The next event; `Ok(None)` when the stream ended cleanly (after [`stop`](Self::stop)).
    /// Cancel-safe: dropping the future loses no event.
    pub async fn recv(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        loop {
            let event = match self.client.recv().await {
                Ok(Some(e)) => e,
                Ok(None) => return Ok(None),
                Err(e) => return Err(classify(&e, &self.params, Step::Streaming)),
            };
            let mapped = match event {
                ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                    SourceEvent::Begin(Begin { final_lsn: final_lsn.into(), commit_ts: commit_time_micros, xid })
                }
                ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
                    SourceEvent::Commit(Commit { flags: 0, commit_lsn: lsn.into(), end_lsn: end_lsn.into(), commit_ts: commit_time_micros })
                }
                ReplicationEvent::XLogData { wal_start, data, .. } => SourceEvent::Data { wal_start: wal_start.into(), payload: data },
                ReplicationEvent::Message { transactional, lsn, prefix, content } => {
                    SourceEvent::Message(LogicalMessage { transactional, lsn: lsn.into(), prefix, content })
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => SourceEvent::KeepAlive { wal_end: wal_end.into() },
                // walcast never sets a stop LSN.
                ReplicationEvent::StoppedAt { .. } => continue,
            };
            return Ok(Some(mapped));
        }
    }

    /// Tell the server everything up to `lsn` is durable (monotonic; sent within the status
    /// interval, and at once when the server asks).
    pub fn confirm(&self, lsn: Lsn) {
        self.client.update_applied_lsn(lsn.into());
    }

    /// End the stream cleanly (CopyDone) and wait for the connection to close.
    pub async fn stop(mut self) -> Result<(), SourceError> {
        self.client.shutdown().await.map_err(|e| classify(&e, &self.params, Step::Streaming))
    }
}

/// A replication slot just created with an exported snapshot. The snapshot stays importable
/// (`SET TRANSACTION SNAPSHOT`) while this value lives; dropping it ends the session.
pub struct ExportedSnapshot {
    /// Keeps the exporting session open (it must stay idle).
    _session: ReplicationClient,
    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    /// The slot's consistent point: the snapshot sees every transaction committed before it,
    /// the slot streams every transaction committed after it.
    pub point: Lsn,
}

/// Create logical slot `slot` (pgoutput) on a replication session and export its snapshot.
/// `temporary`: the slot disappears with the session (used by `walcast snapshot`).
pub async fn create_slot_exporting(
    params: &ConnParams,
    slot: &str,
    publication: &str,
    temporary: bool,
) -> Result<ExportedSnapshot, SourceError> {
    let cfg = session_config(params, slot, publication).await?;
    let mut session = ReplicationClient::connect_gated(cfg).await.map_err(|e| classify(&e, params, Step::Connect))?;
    // Asked first: a refusal then says what to change, and any error of this first command is
    // one of connecting.
    let wal_level = session.simple_query("SHOW wal_level").await.map_err(|e| classify(&e, params, Step::Connect))?;
    let wal_level = wal_level.first().and_then(|r| r.first()).and_then(|v| v.as_ref()).map(|b| String::from_utf8_lossy(b).into_owned());
    if let Some(problem) = wal_level.as_deref().and_then(super::sql::wal_level_problem) {
        return Err(problem);
    }
    // The slot name was validated as [a-z0-9_]; quoting keeps it an identifier regardless.
    let sql = format!(
        "CREATE_REPLICATION_SLOT \"{}\" {}LOGICAL pgoutput EXPORT_SNAPSHOT",
        slot.replace('"', ""),
        if temporary { "TEMPORARY " } else { "" }
    );
    let rows = match tokio::time::timeout(params.connect_timeout.max(std::time::Duration::from_secs(60)), session.simple_query(&sql)).await
    {
        Ok(r) => r.map_err(|e| classify(&e, params, Step::CreateSlot))?,
        Err(_) => {
            session.abort();
            return Err(SourceError::Transient(format!(
                "creating slot {slot:?} waited over a minute for running transactions to finish; it will be retried"
            )));
        }
    };
    // One row: slot_name, consistent_point, snapshot_name, output_plugin.
    let field = |i: usize| {
        rows.first().and_then(|r| r.get(i)).and_then(|v| v.as_ref()).and_then(|b| std::str::from_utf8(b).ok()).map(str::to_string)
    };
    let (Some(point), Some(name)) = (field(1), field(2)) else {
        return Err(SourceError::Transient("CREATE_REPLICATION_SLOT answered without a consistent point or snapshot name".into()));
    };
    let point = super::sql::consistent_point(slot, Some(&point))?;
    Ok(ExportedSnapshot { _session: session, name, point })
}

impl From<pgwire_replication::Lsn> for Lsn {
    fn from(l: pgwire_replication::Lsn) -> Self {
        Lsn(l.as_u64())
    }
}

impl From<Lsn> for pgwire_replication::Lsn {
    fn from(l: Lsn) -> Self {
        pgwire_replication::Lsn::from_u64(l.0)
    }
}

/// What the server answered IDENTIFY_SYSTEM on a replication session opened like `run` opens it.
#[derive(Debug, Clone)]
pub(super) struct ReplicationProbe {
    /// The cluster's system identifier.
    pub(super) system_id: String,
    /// Current timeline.
    pub(super) timeline: u32,
    /// Current WAL flush position.
    pub(super) xlogpos: Lsn,
}

/// Open a replication session with the settings `run` uses (address, TLS, authentication) and
/// run IDENTIFY_SYSTEM on it: `walcast check` tests the replication connection itself, which
/// pg_hba.conf, the authentication method and TLS can treat differently from the SQL one.
pub(super) async fn probe_replication(params: &ConnParams, slot: &str, publication: &str) -> Result<ReplicationProbe, SourceError> {
    let cfg = session_config(params, slot, publication).await?;
    let mut session = ReplicationClient::connect_gated(cfg).await.map_err(|e| classify(&e, params, Step::Connect))?;
    let answer = match tokio::time::timeout(params.connect_timeout, session.identify_system()).await {
        Ok(r) => r.map_err(|e| classify(&e, params, Step::Connect))?,
        Err(_) => {
            session.abort();
            return Err(SourceError::Connection {
                target: params.display(),
                reason: format!("IDENTIFY_SYSTEM not answered within {} ms", params.connect_timeout.as_millis()),
            });
        }
    };
    // Dropping a gated session before START_REPLICATION ends it.
    Ok(ReplicationProbe { system_id: answer.system_id, timeline: answer.timeline, xlogpos: answer.xlogpos.into() })
}

/// The settings every replication session of walcast starts from.
async fn session_config(params: &ConnParams, slot: &str, publication: &str) -> Result<ReplicationConfig, SourceError> {
    Ok(ReplicationConfig::new(
        params.host.clone(),
        params.user.clone(),
        params.password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default(),
        params.database.clone(),
        slot.to_string(),
        publication.to_string(),
    )
    .with_port(params.port)
    .with_tls(tls_config(params).await?)
    .with_options(SESSION_OPTIONS)
    .with_application_name(params.application_name.clone()))
}

/// The replication connection's TLS settings for the configured sslmode.
async fn tls_config(params: &ConnParams) -> Result<TlsConfig, SourceError> {
    Ok(match params.sslmode {
        SslMode::Disable => TlsConfig::disabled(),
        SslMode::Require => TlsConfig::require(),
        SslMode::VerifyCa => {
            let tls = TlsConfig::verify_ca(params.sslrootcert.clone());
            // A socket directory has no TLS (pgwire-replication refuses it with a clear error).
            if params.host.starts_with('/') {
                tls
            } else {
                match super::tls::verify_ca_server_name(params).await? {
                    Some(name) => tls.with_sni_hostname(name),
                    None => tls,
                }
            }
        }
        SslMode::VerifyFull => TlsConfig::verify_full(params.sslrootcert.clone()),
    })
}

/// Classify by the error's kind, the SQLSTATE and the step; never by message text.
fn classify(e: &PgWireError, params: &ConnParams, step: Step) -> SourceError {
    match e {
        PgWireError::Server(text) => match split_sqlstate(text) {
            (message, Some(code)) => SourceError::from_server(code, message, step, &params.user),
            (message, None) => SourceError::Query(message.to_string()),
        },
        PgWireError::Auth(text) => SourceError::setup(
            format!("authentication of role {:?} failed on the replication connection: {text}", params.user),
            super::AUTH_FIX,
        ),
        PgWireError::Tls(text) => SourceError::setup(format!("TLS failed: {text}"), "check source.sslmode and source.sslrootcert"),
        PgWireError::MessageTooLarge { payload_bytes, limit_bytes } => SourceError::setup(
            format!("the server sent a {payload_bytes}-byte message, over the {limit_bytes}-byte limit"),
            "a single row this large cannot be streamed; report it",
        ),
        // The handshake's certificate check fails the same way again.
        PgWireError::Io(io) if find_cause::<rustls::Error>(io.as_ref()).is_some() => {
            SourceError::setup(format!("TLS failed on the replication connection: {io}"), "check source.sslmode and source.sslrootcert")
        }
        other => SourceError::Connection { target: params.display(), reason: other.to_string() },
    }
}

/// pgwire-replication reports a server error as its message followed by `(SQLSTATE xxxxx)`: the
/// code is read from there (the crate keeps no separate field).
fn split_sqlstate(text: &str) -> (&str, Option<&str>) {
    match text.rfind("(SQLSTATE ") {
        Some(i) => {
            let code = text[i + 10..].trim_end_matches(')').trim();
            (text[..i].trim_end(), Some(code))
        }
        None => (text, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_is_split_off() {
        assert_eq!(
            split_sqlstate("replication slot \"x\" does not exist (SQLSTATE 42704)"),
            ("replication slot \"x\" does not exist", Some("42704"))
        );
        assert_eq!(split_sqlstate("boom"), ("boom", None));
    }

    fn params() -> ConnParams {
        ConnParams {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "app".into(),
            user: "walcast".into(),
            password: None,
            sslmode: SslMode::VerifyFull,
            sslrootcert: None,
            application_name: "walcast".into(),
            connect_timeout: std::time::Duration::from_secs(5),
        }
    }

    #[test]
    fn errors_are_classified_by_kind_sqlstate_and_step() {
        let p = params();
        let certificate = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let tls = PgWireError::Io(std::sync::Arc::new(std::io::Error::new(std::io::ErrorKind::InvalidData, certificate)));
        assert!(matches!(classify(&tls, &p, Step::Connect), SourceError::Setup { .. }));
        let reset = PgWireError::Io(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert!(classify(&reset, &p, Step::Streaming).is_retryable());
        let auth = PgWireError::Auth("unsupported auth method code: 7".into());
        assert!(classify(&auth, &p, Step::Connect).to_string().contains("pg_hba.conf"));

        let missing = PgWireError::Server("replication slot \"s\" does not exist (SQLSTATE 42704)".into());
        assert!(classify(&missing, &p, Step::StartReplication).to_string().contains("walcast slot create"));
        assert!(classify(&missing, &p, Step::Streaming).to_string().contains("source.create_publication"));
        let closed = PgWireError::Server("database \"app\" is not currently accepting connections (SQLSTATE 55000)".into());
        assert!(classify(&closed, &p, Step::Connect).is_retryable(), "ALLOW_CONNECTIONS false passes");
        assert!(!classify(&closed, &p, Step::StartReplication).is_retryable(), "an invalidated slot does not");
        let canceled = PgWireError::Server("canceling statement due to user request (SQLSTATE 57014)".into());
        assert!(classify(&canceled, &p, Step::Streaming).is_retryable());
    }
}
