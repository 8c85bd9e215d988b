//! The walcast binary: parse the command line, wire shutdown signals, run.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use walcast::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the walsender sends a message per row, and on a multi-threaded runtime the
    // reader, loop and sink tasks wake each other across threads for every trickle of data. With
    // Postgres busy on the same cores that turned into ~1M context switches per 1M rows and a
    // 5x slowdown (scripts/bench-replication); on one thread it stays near pg_recvlogical's cost.
    // Blocking file writes still go to the blocking pool, and rdkafka has its own threads.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walcast: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_FAILURE);
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        cli::execute(cli, shutdown).await
    })
}

/// First SIGINT/SIGTERM: drain and stop. A second one: exit at once (nothing unconfirmed is lost;
/// it is streamed again on the next start).
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        eprintln!("walcast: cannot install signal handlers; stop with SIGKILL");
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if round == 0 {
            tracing::info!("shutdown requested, draining");
            shutdown.cancel();
        } else {
            eprintln!("walcast: second signal, exiting without draining");
            std::process::exit(130);
        }
    }
}
