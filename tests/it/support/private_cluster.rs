//! A Postgres cluster of one test (`scripts/pg-cluster` in a temporary directory, on a free
//! port) for settings the shared clusters must not get: a certificate of its own, pg_hba.conf
//! lines, password rules. Stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{connect, exec, free_port, repo_root, PgUrl};

/// A running throwaway cluster (trust on 127.0.0.1 until [`PrivateCluster::prepend_hba`]).
pub struct PrivateCluster {
    /// Superuser `postgres`, database `postgres`.
    pub url: PgUrl,
    /// The data directory.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl PrivateCluster {
    /// initdb and start a cluster with wal_level = logical.
    pub async fn start(name: &str) -> Self {
        Self::start_with_wal_level(name, "logical").await
    }

    /// initdb and start a cluster with this wal_level (`logical` or `replica`).
    pub async fn start_with_wal_level(name: &str, wal_level: &str) -> Self {
        let tmp = tempfile::Builder::new().prefix(&format!("walcast-{name}-")).tempdir().expect("tempdir");
        let dir = tmp.path().join("pg");
        let port = free_port();
        pg_cluster(&["start", &dir.to_string_lossy(), &port.to_string(), wal_level]).await;
        let url = PgUrl { user: "postgres".into(), host: "127.0.0.1".into(), port, database: "postgres".into() };
        Self { url, dir, _tmp: tmp }
    }

    /// Stop (fast) and start again: for settings that need a restart (ALTER SYSTEM of wal_level).
    pub async fn restart(&self) {
        pg_cluster(&["restart", &self.dir.to_string_lossy(), "fast"]).await;
    }

    /// Copy `from` into the data directory as `name`, owned like the directory (the server
    /// refuses a key file it does not own) with mode 0600; returns its path.
    pub fn install_file(&self, from: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let to = self.dir.join(name);
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let owner = std::fs::metadata(&self.dir).expect("data directory");
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).expect("chown");
        to
    }

    /// Put `lines` before the cluster's trust lines in pg_hba.conf and reload.
    pub async fn prepend_hba(&self, lines: &str) {
        let path = self.dir.join("pg_hba.conf");
        let old = std::fs::read_to_string(&path).expect("pg_hba.conf");
        // Rewriting in place keeps the file's owner.
        std::fs::write(&path, format!("{lines}\n{old}")).expect("write pg_hba.conf");
        self.reload().await;
    }

    /// `pg_reload_conf()`, then wait until new sessions run with the reloaded files (a new
    /// backend inherits the postmaster's load time).
    pub async fn reload(&self) {
        let admin = connect(&self.url).await;
        let errors: i64 =
            admin.query_one("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL", &[]).await.expect("pg_hba_file_rules").get(0);
        assert_eq!(errors, 0, "pg_hba.conf of {} has errors", self.dir.display());
        let before: String = admin.query_one("SELECT now()::text", &[]).await.expect("now").get(0);
        exec(&admin, "SELECT pg_reload_conf()").await;
        for _ in 0..200 {
            let fresh = connect(&self.url).await;
            let reloaded: bool =
                fresh.query_one("SELECT pg_conf_load_time() >= $1::text::timestamptz", &[&before]).await.expect("load time").get(0);
            if reloaded {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{} did not reload its configuration", self.dir.display());
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/pg-cluster"))
            .args(["stop", &self.dir.to_string_lossy(), "immediate"])
            .output();
    }
}

async fn pg_cluster(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let script = repo_root().join("scripts/pg-cluster");
    let out = tokio::task::spawn_blocking(move || Command::new("bash").arg(script).args(&args).output())
        .await
        .expect("join")
        .expect("run scripts/pg-cluster");
    assert!(out.status.success(), "scripts/pg-cluster failed: {}", String::from_utf8_lossy(&out.stderr));
}
