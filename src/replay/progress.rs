//! Replay progress a person can read: rows, rows/s, the LSN reached and the percent of the LSN
//! range. On a terminal (text logs, standard error a TTY) one line with a bar, rewritten in
//! place every second; otherwise a `replay progress` log record every few seconds.

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::lsn::Lsn;

/// How progress is shown (`replay progress` log records when not on a terminal).
pub(super) use crate::telemetry::ProgressMode as Mode;

/// Log records every this often (a terminal line every second).
const LOG_EVERY: Duration = Duration::from_secs(3);

/// Where a replay stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Reached {
    /// Changes handed to the sinks.
    pub rows: u64,
    /// Changes read from the log, kept or filtered out.
    pub read: u64,
    /// The LSN of the last commit read.
    pub lsn: Lsn,
    /// Time spent so far.
    pub elapsed: Duration,
}

impl Reached {
    /// Rows handed over per second; `None` before any time passed.
    pub(super) fn rows_per_s(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        (secs > 0.0).then(|| self.rows as f64 / secs)
    }
}

/// The LSN range a replay covers: `(from, to]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Range {
    /// Exclusive start.
    pub from: Lsn,
    /// Inclusive end.
    pub to: Lsn,
}

impl Range {
    /// Percent of the range behind `lsn`, 0..=100 (100 for an empty range).
    pub(super) fn percent(&self, lsn: Lsn) -> f64 {
        let span = self.to.0.saturating_sub(self.from.0);
        if span == 0 {
            return 100.0;
        }
        (lsn.0.saturating_sub(self.from.0) as f64 * 100.0 / span as f64).min(100.0)
    }
}

/// `950`, `12.3k`, `2.0M`, `1.5G`.
fn fmt_count(n: f64) -> String {
    match n {
        n if n < 1e3 => format!("{n:.0}"),
        n if n < 1e6 => format!("{:.1}k", n / 1e3),
        n if n < 1e9 => format!("{:.1}M", n / 1e6),
        n => format!("{:.1}G", n / 1e9),
    }
}

/// Width of the terminal bar, in cells.
const BAR_CELLS: usize = 24;

/// `[#########...............]`: the percent of the range as filled cells.
fn bar(percent: f64) -> String {
    let filled = ((percent.clamp(0.0, 100.0) / 100.0) * BAR_CELLS as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR_CELLS - filled))
}

/// The terminal line: a bar, then the figures.
pub(super) fn terminal_line(range: &Range, r: &Reached) -> String {
    let percent = range.percent(r.lsn);
    format!(
        "replay {} {percent:.1}% ({} rows, {} rows/s, at {} of {}..{})",
        bar(percent),
        fmt_count(r.rows as f64),
        fmt_count(r.rows_per_s().unwrap_or(0.0)),
        r.lsn,
        range.from,
        range.to,
    )
}

/// Progress of one replay.
pub(super) struct Progress {
    mode: Mode,
    range: Range,
    started: Instant,
    last_shown: Instant,
    rows: u64,
    read: u64,
    lsn: Lsn,
    /// A terminal line is on screen (end it with a newline before leaving).
    drawn: bool,
}

impl Progress {
    /// A replay of `range`.
    pub(super) fn new(mode: Mode, range: Range) -> Self {
        let now = Instant::now();
        Self { mode, range, started: now, last_shown: now, rows: 0, read: 0, lsn: range.from, drawn: false }
    }

    /// Where the replay stands now.
    pub(super) fn reached(&self) -> Reached {
        Reached { rows: self.rows, read: self.read, lsn: self.lsn, elapsed: self.started.elapsed() }
    }

    /// `rows` more were handed to the sinks out of `read` read, up to `lsn`; shown when due.
    pub(super) fn advance(&mut self, rows: u64, read: u64, lsn: Option<Lsn>) {
        self.rows += rows;
        self.read += read;
        if let Some(lsn) = lsn {
            self.lsn = self.lsn.max(lsn);
        }
        if self.last_shown.elapsed() >= self.mode.every(LOG_EVERY) {
            self.show(false);
        }
    }

    /// Show where the replay stands (`last`: the final line, which stays on a terminal).
    pub(super) fn show(&mut self, last: bool) {
        self.last_shown = Instant::now();
        let r = self.reached();
        match self.mode {
            Mode::Terminal => {
                // Erase, draw, return to column 0: a log line written next overwrites it.
                let end = if last { "\n" } else { "\r" };
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\x1b[2K{}{end}", terminal_line(&self.range, &r));
                let _ = err.flush();
                self.drawn = !last;
            }
            Mode::Log => {
                tracing::info!(
                    rows = r.rows,
                    read = r.read,
                    rows_per_s = r.rows_per_s().unwrap_or(0.0).round() as u64,
                    lsn = %r.lsn,
                    from = %self.range.from,
                    to = %self.range.to,
                    percent = (self.range.percent(r.lsn) * 10.0).round() / 10.0,
                    "replay progress"
                );
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_of_the_lsn_range_and_the_line() {
        let range = Range { from: Lsn(0x1000), to: Lsn(0x2000) };
        assert_eq!(range.percent(Lsn(0x1000)), 0.0);
        assert_eq!(range.percent(Lsn(0x1800)), 50.0);
        assert_eq!(range.percent(Lsn(0x3000)), 100.0, "past the end counts as done");
        assert_eq!(Range { from: Lsn(5), to: Lsn(5) }.percent(Lsn(5)), 100.0);
        let r = Reached { rows: 12_345, read: 20_000, lsn: Lsn(0x1800), elapsed: Duration::from_secs(2) };
        assert_eq!(
            terminal_line(&range, &r),
            "replay [############............] 50.0% (12.3k rows, 6.2k rows/s, at 0/1800 of 0/1000..0/2000)"
        );
        assert_eq!(bar(0.0), format!("[{}]", ".".repeat(BAR_CELLS)));
        assert_eq!(bar(100.0), format!("[{}]", "#".repeat(BAR_CELLS)));
    }
}
