//! `walcast demo`: a throwaway Postgres with a sample catalogue, a workload, and the stream on stdout.

/// Default port of the demo cluster.
pub const DEFAULT_PORT: u16 = 54_400;
/// Default pause between workload transactions.
pub const DEFAULT_WORKLOAD_INTERVAL_MS: u64 = 500;

/// Run the demo until `shutdown`.
pub async fn run(port: u16, interval_ms: u64, shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    let _ = (port, interval_ms, shutdown);
    anyhow::bail!("the demo is not finished yet")
}
