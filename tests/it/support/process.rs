//! The walcast process: `walcast run` with a generated config (JSON lines to a file, a debug log,
//! metrics on a free port), its output read incrementally, signals, memory figures, and the other
//! commands run to completion.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::pg::{PgUrl, TestDb};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_walcast");

/// Generous default for "wait until walcast has written N lines".
pub const WAIT: Duration = Duration::from_secs(60);

/// Settings of one generated config file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra lines inside `[source]`, e.g. `tables = ["public.t"]`.
    pub source: String,
    /// Extra sections appended at the end, e.g. `[pipeline]\nbatch_max_changes = 100`.
    pub extra: String,
}

/// The walcast binary running `walcast run` against a [`TestDb`], writing JSON lines to a file in
/// its own temporary directory and its log (`walcast=debug`) to another.
pub struct Walcast {
    pub dir: Option<tempfile::TempDir>,
    pub config_path: PathBuf,
    pub out_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// How many times the process was started.
    pub starts: u32,
    /// Complete lines read so far, parsed, and the byte offset after them.
    parsed: Vec<Value>,
    offset: u64,
}

/// TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A config file for `db` (slot, publication and database of the test) writing to `out`.
pub fn config_toml(url: &PgUrl, slot: &str, publication: &str, out: &Path, opts: &Options) -> String {
    // Snapshot progress beside the output, never in the working directory.
    let snapshot = if opts.extra.contains("[snapshot]") {
        String::new()
    } else {
        let state = out.parent().unwrap_or(Path::new(".")).join("state");
        format!("[snapshot]\nstate_dir = {}\n", toml_str(&state.to_string_lossy()))
    };
    format!(
        "[source]\nhost = {host}\nport = {port}\ndatabase = {db}\nuser = {user}\nslot = {slot}\npublication = {publication}\n\
         status_interval_ms = 200\n{source}\n\n\
         [retry]\ninitial_ms = 50\nmax_ms = 1000\n\n\
         [sinks.jsonl]\npath = {out}\n\n\
         [log]\nlevel = \"walcast=debug\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n{snapshot}{extra}\n",
        host = toml_str(&url.host),
        port = url.port,
        db = toml_str(&url.database),
        user = toml_str(&url.user),
        slot = toml_str(slot),
        publication = toml_str(publication),
        source = opts.source,
        out = toml_str(&out.to_string_lossy()),
        extra = opts.extra,
    )
}

impl Walcast {
    /// Prepare (not start) walcast for `db` with default options.
    pub fn new(db: &TestDb) -> Self {
        Self::with_options(db, &Options::default())
    }

    pub fn with_options(db: &TestDb, opts: &Options) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("{}-", db.name)).tempdir().expect("tempdir");
        let out_path = dir.path().join("changes.jsonl");
        let log_path = dir.path().join("walcast.log");
        let config_path = dir.path().join("walcast.toml");
        std::fs::write(&config_path, config_toml(&db.url, &db.slot, &db.publication, &out_path, opts)).expect("write config");
        Self { dir: Some(dir), config_path, out_path, log_path, child: None, starts: 0, parsed: Vec::new(), offset: 0 }
    }

    /// Start `walcast run`; stdout and stderr are appended to the log file.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "walcast is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let mut log_for_banner = log.try_clone().expect("log");
        self.starts += 1;
        let _ = std::io::Write::write_all(&mut log_for_banner, format!("===== test harness: start #{} =====\n", self.starts).as_bytes());
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn walcast");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("walcast is not running").id()
    }

    /// Wait (up to [`WAIT`]) until this walcast streams `db`'s slot; panics with its log if it
    /// stops or never does.
    pub async fn wait_streaming_slot(&mut self, db: &TestDb) {
        let deadline = Instant::now() + WAIT;
        while !db.slot_state(&db.slot).await.is_some_and(|s| s.active) {
            assert!(Instant::now() < deadline && self.is_running(), "walcast did not start streaming\n{}", self.log_tail(30));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    pub fn sigkill(&self) {
        signal(self.pid(), "KILL");
    }

    /// Wait for the process to exit (it was signalled or is expected to stop by itself).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("walcast is not running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!("walcast did not exit within {timeout:?}\n{}", self.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) -> ExitStatus {
        self.sigkill();
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// SIGTERM and wait for the drain; asserts a clean exit (code 0).
    pub async fn stop(&mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(60)).await;
        assert_eq!(status.code(), Some(0), "walcast should drain and exit 0 on SIGTERM\n{}", self.log_tail(40));
    }

    /// The whole output file.
    pub fn raw_output(&self) -> Vec<u8> {
        match std::fs::read(&self.out_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("read {}: {e}", self.out_path.display()),
        }
    }

    /// Every complete line written so far, parsed (each line must be one JSON object).
    pub fn lines(&mut self) -> &[Value] {
        let Ok(mut file) = std::fs::File::open(&self.out_path) else { return &self.parsed };
        file.seek(SeekFrom::Start(self.offset)).expect("seek");
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).expect("read output");
        let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else { return &self.parsed };
        for (i, line) in buf[..last_nl].split(|&b| b == b'\n').enumerate() {
            let v: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!(
                    "output line {} is not valid JSON ({e}): {}",
                    self.parsed.len() + i + 1,
                    String::from_utf8_lossy(&line[..line.len().min(500)])
                )
            });
            assert!(v.is_object(), "output line is not a JSON object: {v}");
            self.parsed.push(v);
        }
        self.offset += last_nl as u64 + 1;
        &self.parsed
    }

    /// Wait until at least `n` lines were written; returns all lines. Panics (with the log tail)
    /// on timeout or when walcast exits first.
    pub async fn wait_lines(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lines().len() >= n {
                return self.parsed.clone();
            }
            if !self.is_running() {
                panic!("walcast exited with {:?} after {} of {n} lines\n{}", self.child_status(), self.parsed.len(), self.log_tail(60));
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} with {} of {n} lines\n{}", self.parsed.len(), self.log_tail(60));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until a line satisfies `pred`; returns all lines.
    pub async fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            let lines = self.lines();
            if lines[checked..].iter().any(&pred) {
                return self.parsed.clone();
            }
            checked = lines.len();
            if !self.is_running() {
                panic!("walcast exited with {:?} before {what}\n{}", self.child_status(), self.log_tail(60));
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what} ({checked} lines)\n{}", self.log_tail(60));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until the log contains `text` (e.g. "streaming").
    pub async fn wait_log(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).contains(text)).unwrap_or(false) {
            if !self.is_running() {
                panic!("walcast exited with {:?} before logging {text:?}\n{}", self.child_status(), self.log_tail(60));
            }
            assert!(Instant::now() < deadline, "walcast did not log {text:?} within {timeout:?}\n{}", self.log_tail(60));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn child_status(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()?;
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Peak resident set size (VmHWM) of the running process, in kB.
    pub fn vm_hwm_kb(&self) -> u64 {
        proc_status_kb(self.pid(), "VmHWM")
    }

    /// Current resident set size (VmRSS), in kB.
    pub fn vm_rss_kb(&self) -> u64 {
        proc_status_kb(self.pid(), "VmRSS")
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!("--- walcast log tail ({}) ---\n{tail}\n--- end of log ---", self.log_path.display())
    }

    /// Keep the temporary directory (config, output, log) for inspection.
    pub fn keep_files(&mut self) -> Option<PathBuf> {
        self.dir.take().map(|d| d.keep())
    }
}

impl Drop for Walcast {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                signal(child.id(), "KILL");
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(80));
            if let Some(dir) = self.keep_files() {
                eprintln!("walcast files kept in {}", dir.display());
            }
        }
    }
}

/// The snapshot progress file of `slot` in `state_dir` (`snapshot-SLOT.json`), parsed, if it
/// exists (walcast replaces it atomically, so a read never sees half a file).
pub fn read_snapshot_state(state_dir: &Path, slot: &str) -> Option<Value> {
    let text = std::fs::read_to_string(state_dir.join(format!("snapshot-{slot}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// Wait until the load `wc` runs has recorded at least `rows` rows of `table` (`schema.table`)
/// in its progress file and is not done: a kill then interrupts it. Fails when the load
/// finished first (the table is too small to be caught in flight) or makes no progress.
pub async fn wait_load_in_flight(wc: &Walcast, state_dir: &Path, slot: &str, table: &str, rows: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let st = read_snapshot_state(state_dir, slot);
        assert!(st.as_ref().is_none_or(|s| s["status"] != "done"), "{table} was loaded before it could be interrupted; make it bigger");
        if st.as_ref().and_then(|s| s["tables"][table]["rows"].as_u64()).is_some_and(|n| n >= rows) {
            return;
        }
        assert!(Instant::now() < deadline, "no snapshot progress on {table}\n{}", wc.log_tail(40));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Counts the newlines appended to a file (walcast's output), reading only what is new and never
/// parsing a line: for outputs too big to hold (a million rows, a 200 MB value).
#[derive(Default)]
pub struct LineCounter {
    offset: u64,
    lines: u64,
    buf: Vec<u8>,
}

impl LineCounter {
    /// Read what was appended to `path` since the last call; returns the lines counted so far.
    pub fn update(&mut self, path: &Path) -> u64 {
        if self.buf.is_empty() {
            self.buf = vec![0; 1 << 20];
        }
        if let Ok(mut f) = std::fs::File::open(path) {
            f.seek(SeekFrom::Start(self.offset)).expect("seek");
            loop {
                let n = f.read(&mut self.buf).expect("read");
                if n == 0 {
                    break;
                }
                self.offset += n as u64;
                self.lines += self.buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            }
        }
        self.lines
    }

    /// Lines counted so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.offset
    }
}

/// Send a signal with the `kill` command (no libc binding needed).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// A `kB` field of /proc/PID/status.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let f = std::fs::File::open(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    for line in BufReader::new(f).lines() {
        let line = line.expect("read status");
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            return rest.trim().trim_end_matches("kB").trim().parse().expect("kB value");
        }
    }
    panic!("{field} not in /proc/{pid}/status")
}

/// Run a walcast command other than `run` to completion (with a timeout).
pub async fn walcast_cmd(args: &[&str]) -> CmdOutput {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("walcast {args:?} did not finish within 60 s"))
        .expect("run walcast");
    CmdOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct CmdOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {:?}\n--- stdout ---\n{}--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}
