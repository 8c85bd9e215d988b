//! A TCP relay between walcast and Postgres that counts replication protocol messages as they
//! pass: standby status updates (walcast -> server, CopyData `r`), keepalives (server -> walcast,
//! CopyData `k`) and the keepalives that ask for a reply. Bytes are forwarded unchanged; the
//! counts come from the wire, not from walcast. Plain TCP only (walcast's default
//! `sslmode = "disable"` sends no SSLRequest, so the first client message is the startup packet).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Message counts since the relay started.
#[derive(Default, Debug)]
pub(super) struct WireCounts {
    status_updates: AtomicU64,
    keepalives: AtomicU64,
    reply_requests: AtomicU64,
}

/// A reading of [`WireCounts`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct WireReading {
    pub(super) status_updates: u64,
    pub(super) keepalives: u64,
    pub(super) reply_requests: u64,
}

impl WireCounts {
    pub(super) fn read(&self) -> WireReading {
        WireReading {
            status_updates: self.status_updates.load(Ordering::Relaxed),
            keepalives: self.keepalives.load(Ordering::Relaxed),
            reply_requests: self.reply_requests.load(Ordering::Relaxed),
        }
    }
}

impl WireReading {
    /// Messages per second between two readings `secs` apart.
    pub(super) fn rates_since(&self, earlier: &WireReading, secs: f64) -> (f64, f64, f64) {
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        (
            per(self.status_updates, earlier.status_updates),
            per(self.keepalives, earlier.keepalives),
            per(self.reply_requests, earlier.reply_requests),
        )
    }
}

/// Listen on a free local port and relay every connection to `host:port`. Returns the port.
pub(super) async fn relay(host: &str, port: u16) -> Result<(u16, Arc<WireCounts>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("bind the counting relay")?;
    let local = listener.local_addr()?.port();
    let counts = Arc::new(WireCounts::default());
    let target = format!("{host}:{port}");
    let shared = Arc::clone(&counts);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&target).await else { continue };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, Direction::ToServer, Arc::clone(&shared)));
            tokio::spawn(pump(sr, cw, Direction::ToClient, Arc::clone(&shared)));
        }
    });
    Ok((local, counts))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

async fn pump(mut from: impl AsyncReadExt + Unpin, mut to: impl AsyncWriteExt + Unpin, dir: Direction, counts: Arc<WireCounts>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = Frames::new(dir == Direction::ToServer);
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        frames.feed(&buf[..n], |tag, head| {
            // CopyData: its first payload byte says what it carries.
            if tag != b'd' {
                return;
            }
            match (dir, head.first()) {
                (Direction::ToServer, Some(b'r')) => {
                    counts.status_updates.fetch_add(1, Ordering::Relaxed);
                }
                (Direction::ToClient, Some(b'k')) => {
                    counts.keepalives.fetch_add(1, Ordering::Relaxed);
                    // 'k', wal_end (8), server time (8), reply requested (1).
                    if head.get(17) == Some(&1) {
                        counts.reply_requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        });
    }
    let _ = to.shutdown().await;
}

/// Splits a byte stream into protocol messages: tag (1), length (4, itself included), payload;
/// keeps the first `HEAD` payload bytes of each. The first client message has no tag.
struct Frames {
    untagged_first: bool,
    header: Vec<u8>,
    head: Vec<u8>,
    /// Payload bytes of the current message still to come.
    left: usize,
    in_payload: bool,
}

const HEAD: usize = 18;

impl Frames {
    fn new(untagged_first: bool) -> Self {
        Self { untagged_first, header: Vec::with_capacity(5), head: Vec::with_capacity(HEAD), left: 0, in_payload: false }
    }

    fn feed(&mut self, mut bytes: &[u8], mut on_message: impl FnMut(u8, &[u8])) {
        while !bytes.is_empty() {
            if !self.in_payload {
                let want = if self.untagged_first { 4 } else { 5 };
                let take = (want - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() < want {
                    return;
                }
                let len_at = want - 4;
                let len =
                    u32::from_be_bytes([self.header[len_at], self.header[len_at + 1], self.header[len_at + 2], self.header[len_at + 3]]);
                self.left = (len as usize).saturating_sub(4);
                self.in_payload = true;
                self.head.clear();
            }
            let take = self.left.min(bytes.len());
            let keep = (HEAD - self.head.len()).min(take);
            self.head.extend_from_slice(&bytes[..keep]);
            self.left -= take;
            bytes = &bytes[take..];
            if self.left == 0 {
                let tag = if self.untagged_first { 0 } else { self.header[0] };
                on_message(tag, &self.head);
                self.untagged_first = false;
                self.header.clear();
                self.in_payload = false;
            }
        }
    }
}
