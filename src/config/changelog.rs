//! `[changelog]`: the durable local change log that replay and decoupled sinks read from.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{default_true, ConfigError};

/// The change log: every streamed change appended to checksummed segment files in a local
/// directory, so sinks can be replayed from a saved LSN after the slot moved on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangelogConfig {
    /// On unless explicitly disabled (`enabled = false`): without the log there is no replay.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Directory of the segment files. Default: `STATE_DIR/changelog-SLOT` ([`Self::dir_for`]),
    /// `STATE_DIR` being `snapshot.state_dir`. Must survive restarts (a persistent volume).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// A segment is sealed and a new one started at the first append past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Per-block compression of the segment files.
    #[serde(default)]
    pub compression: Compression,
    /// Drop the oldest sealed segments while the log is larger than this (0: no size limit).
    /// This limit is hard: it drops a segment a mark or sink cursor still needs (and says so).
    #[serde(default = "default_retention_bytes")]
    pub retention_bytes: u64,
    /// Drop sealed segments last written longer ago than this (0: no age limit), unless a mark
    /// or sink cursor still needs them.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// When the slot is confirmed: once every sink and the log made a change durable (`strict`),
    /// or once the log did (`decoupled`: sinks follow the log at their own pace).
    #[serde(default)]
    pub ack: AckMode,
}

/// Compression of the change log's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Blocks stored as encoded.
    #[default]
    None,
    /// Each block compressed with zstd (smaller files, some CPU per append and read).
    Zstd,
}

/// When the slot is confirmed while the change log is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// At the minimum of the log's and every sink's durable position.
    #[default]
    Strict,
    /// Once the log made a change durable; each sink is fed from the log.
    Decoupled,
}

impl ChangelogConfig {
    /// Default segment size: 64 MiB.
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
    /// Default size limit: 1 GiB.
    pub const DEFAULT_RETENTION_BYTES: u64 = 1024 * 1024 * 1024;
    /// Default age limit: 168 hours (one week).
    pub const DEFAULT_RETENTION_HOURS: u64 = 168;
    /// Smallest segment size accepted (tests and small installations rotate often).
    pub const MIN_SEGMENT_BYTES: u64 = 4096;
    /// Largest segment size accepted.
    pub const MAX_SEGMENT_BYTES: u64 = 1 << 32;

    /// The log's directory: `dir` when set, else `STATE_DIR/changelog-SLOT`.
    pub fn dir_for(&self, state_dir: &Path, slot: &str) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.clone(),
            None => state_dir.join(format!("changelog-{slot}")),
        }
    }

    /// Check every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(ConfigError::invalid("changelog.dir", "must not be empty: leave it out for STATE_DIR/changelog-SLOT"));
        }
        if !(Self::MIN_SEGMENT_BYTES..=Self::MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(ConfigError::invalid(
                "changelog.segment_bytes",
                format!("must be between {} and {}", Self::MIN_SEGMENT_BYTES, Self::MAX_SEGMENT_BYTES),
            ));
        }
        if self.retention_bytes != 0 && self.retention_bytes < self.segment_bytes {
            return Err(ConfigError::invalid(
                "changelog.retention_bytes",
                "must be 0 (no size limit) or at least changelog.segment_bytes: retention drops whole segments",
            ));
        }
        if !self.enabled && self.ack == AckMode::Decoupled {
            return Err(ConfigError::invalid("changelog.ack", "`decoupled` needs the change log: set changelog.enabled = true"));
        }
        Ok(())
    }
}

impl Default for ChangelogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            compression: Compression::default(),
            retention_bytes: Self::DEFAULT_RETENTION_BYTES,
            retention_hours: Self::DEFAULT_RETENTION_HOURS,
            ack: AckMode::default(),
        }
    }
}

fn default_segment_bytes() -> u64 {
    ChangelogConfig::DEFAULT_SEGMENT_BYTES
}
fn default_retention_bytes() -> u64 {
    ChangelogConfig::DEFAULT_RETENTION_BYTES
}
fn default_retention_hours() -> u64 {
    ChangelogConfig::DEFAULT_RETENTION_HOURS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ChangelogConfig, String> {
        let c: ChangelogConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_and_dir_for() {
        let c = parse("").expect("defaults");
        assert!(c.enabled);
        assert_eq!(c.segment_bytes, ChangelogConfig::DEFAULT_SEGMENT_BYTES);
        assert_eq!(c.compression, Compression::None);
        assert_eq!(c.ack, AckMode::Strict);
        assert_eq!(c.dir_for(Path::new("/s"), "walcast"), PathBuf::from("/s/changelog-walcast"));
        let c = parse("dir = \"/logs\"\ncompression = \"zstd\"\nack = \"decoupled\"").expect("set");
        assert_eq!(c.dir_for(Path::new("/s"), "walcast"), PathBuf::from("/logs"));
        assert_eq!((c.compression, c.ack), (Compression::Zstd, AckMode::Decoupled));
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, field) in [
            ("segment_bytes = 10", "changelog.segment_bytes"),
            ("retention_bytes = 5000", "changelog.retention_bytes"),
            ("dir = \"\"", "changelog.dir"),
            ("enabled = false\nack = \"decoupled\"", "changelog.ack"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(field), "{text}: {err}");
        }
        assert!(parse("compression = \"lz4\"").is_err());
        assert!(parse("retention_bytes = 0\nretention_hours = 0").is_ok());
    }
}
