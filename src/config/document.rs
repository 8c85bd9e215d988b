//! `[[sinks.elasticsearch.documents]]`: nested document rules (docs/elasticsearch.md "Document
//! rules"), and `[snapshot]`.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, IndexName, TableName};

/// One nested document rule: a root table whose rows are documents, built by a SQL query, and the
/// dependent tables whose changes rebuild them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsDocumentRule {
    /// Rule name: logs, dead letters, `walcast snapshot --rule NAME`.
    pub name: String,
    /// The index the documents go to.
    pub index: IndexName,
    /// Root table, `schema.table`: one document per row.
    pub table: TableName,
    /// Column of the root table whose value is the root id passed to `query`.
    pub root_key: String,
    /// SQL building complete documents for the root ids in `$1` (an array; Postgres infers its
    /// element type from the query, e.g. `WHERE fw.id = ANY($1)`). One row per document; every
    /// column becomes a field (Postgres's `row_to_json`). A root id without a row is deleted.
    pub query: String,
    /// Column of the query's result used as the document `_id`.
    #[serde(default = "default_document_id")]
    pub document_id: String,
    /// At most this many root ids go into one run of `query` (a batch needing more runs the
    /// query several times inside the same read transaction).
    #[serde(default = "default_document_max_ids")]
    pub max_ids: usize,
    /// Tables whose changes rebuild documents, and how a changed row finds its root ids.
    #[serde(default)]
    pub dependents: Vec<EsDependentRule>,
}

/// How changes of one dependent table map to root ids: exactly one of `root_id_column` and
/// `root_ids_query`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsDependentRule {
    /// The table, `schema.table`.
    pub table: TableName,
    /// A column of the changed row holding the root id (old and new values both count, so a
    /// row moved to another root rebuilds both). For deletes the old row must carry it: give
    /// the table REPLICA IDENTITY FULL, or make the column part of its primary key.
    #[serde(default)]
    pub root_id_column: Option<String>,
    /// SQL returning root ids (first column) for the changed rows' `key_column` values in `$1`
    /// (an array), e.g. a lookup through a link table.
    #[serde(default)]
    pub root_ids_query: Option<String>,
    /// Column of the changed row whose values (old and new) go into `$1` of `root_ids_query`.
    #[serde(default)]
    pub key_column: Option<String>,
}

/// `[snapshot]`: loading the rows that exist before streaming starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// `initial`: when walcast creates the slot, load every mapped table inside the slot's
    /// exported snapshot before streaming. `never`: stream only.
    #[serde(default)]
    pub mode: SnapshotMode,
    /// Rows per chunk (keyset pagination by primary key); progress records the last chunk every
    /// sink made durable (synced every 250 ms or 8 chunks).
    #[serde(default = "default_snapshot_chunk_rows")]
    pub chunk_rows: usize,
    /// Directory for the progress file `snapshot-SLOT.json` (a restart resumes from the last
    /// finished chunk). Must survive restarts: a persistent volume in containers.
    #[serde(default = "default_snapshot_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self { mode: SnapshotMode::default(), chunk_rows: Self::DEFAULT_CHUNK_ROWS, state_dir: PathBuf::from(Self::DEFAULT_STATE_DIR) }
    }
}

/// When the snapshot runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// When walcast creates the slot.
    #[default]
    Initial,
    /// Never (`walcast snapshot` still works on demand).
    Never,
}

fn default_document_id() -> String {
    EsDocumentRule::DEFAULT_DOCUMENT_ID.to_string()
}
fn default_document_max_ids() -> usize {
    EsDocumentRule::DEFAULT_MAX_IDS
}
fn default_snapshot_chunk_rows() -> usize {
    SnapshotConfig::DEFAULT_CHUNK_ROWS
}
fn default_snapshot_state_dir() -> PathBuf {
    PathBuf::from(SnapshotConfig::DEFAULT_STATE_DIR)
}

/// Whether `query` uses the parameter `$1` (and no other).
fn uses_only_param_1(query: &str) -> bool {
    let mut found = false;
    let bytes = query.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            let digits: String = query[i + 1..].chars().take_while(char::is_ascii_digit).collect();
            if digits != "1" {
                return false;
            }
            found = true;
        }
    }
    found
}

impl EsDocumentRule {
    /// Default number of root ids rebuilt by one query.
    pub const DEFAULT_MAX_IDS: usize = 1_000;
    /// Default `document_id`: the query's `id` column.
    pub const DEFAULT_DOCUMENT_ID: &str = "id";

    /// Check every value; the error names the field (`sinks.elasticsearch.documents[i].x`).
    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let field = |name: &str| format!("sinks.elasticsearch.documents[{i}].{name}");
        if self.name.trim().is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(ConfigError::invalid(&field("name"), "must be non-empty letters, digits, `_` or `-`"));
        }
        if self.root_key.trim().is_empty() {
            return Err(ConfigError::invalid(&field("root_key"), "name the root table's id column"));
        }
        if !uses_only_param_1(&self.query) {
            return Err(ConfigError::invalid(
                &field("query"),
                "must use $1 (the array of root ids), e.g. `... WHERE t.id = ANY($1)`, and no other parameter",
            ));
        }
        if self.document_id.trim().is_empty() {
            return Err(ConfigError::invalid(&field("document_id"), "must not be empty"));
        }
        if !(1..=100_000).contains(&self.max_ids) {
            return Err(ConfigError::invalid(&field("max_ids"), "must be between 1 and 100000"));
        }
        for (j, d) in self.dependents.iter().enumerate() {
            let field = |name: &str| format!("sinks.elasticsearch.documents[{i}].dependents[{j}].{name}");
            if d.table == self.table {
                return Err(ConfigError::invalid(&field("table"), "is the root table; its changes rebuild documents already"));
            }
            match (&d.root_id_column, &d.root_ids_query) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(ConfigError::invalid(&field("root_id_column"), "set exactly one of `root_id_column` and `root_ids_query`"))
                }
                (Some(c), None) => {
                    if c.trim().is_empty() {
                        return Err(ConfigError::invalid(&field("root_id_column"), "must not be empty"));
                    }
                    if d.key_column.is_some() {
                        return Err(ConfigError::invalid(&field("key_column"), "is only used with root_ids_query"));
                    }
                }
                (None, Some(q)) => {
                    if !uses_only_param_1(q) {
                        return Err(ConfigError::invalid(
                            &field("root_ids_query"),
                            "must use $1 (the changed rows' key_column values) and no other parameter",
                        ));
                    }
                    if d.key_column.as_deref().is_none_or(|c| c.trim().is_empty()) {
                        return Err(ConfigError::invalid(&field("key_column"), "name the column whose values go into $1"));
                    }
                }
            }
        }
        Ok(())
    }
}

impl SnapshotConfig {
    /// Default rows read per snapshot chunk.
    pub const DEFAULT_CHUNK_ROWS: usize = 5_000;
    /// Default directory for snapshot progress.
    pub const DEFAULT_STATE_DIR: &str = "walcast-state";

    /// Check every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.chunk_rows) {
            return Err(ConfigError::invalid("snapshot.chunk_rows", "must be between 1 and 1000000"));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("snapshot.state_dir", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_param_1() {
        assert!(uses_only_param_1("SELECT 1 WHERE id = ANY($1)"));
        assert!(!uses_only_param_1("SELECT 1"));
        assert!(!uses_only_param_1("SELECT $1, $2"));
        assert!(!uses_only_param_1("SELECT $10"));
    }
}
