//! TLS on both connections: verify-full streams over TLS (the walsender's session shows ssl),
//! verify-ca streams from an IP address whose certificate names only a DNS name (a private
//! cluster with its own CA), a certificate from another CA stops walcast with exit 3 and the
//! fix, and verify-full against an IP address is a config error naming `source.host`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

fn tls_options(mode: &str, ca: &str) -> Options {
    Options { source: format!("sslmode = {}\nsslrootcert = {}", toml_str(mode), toml_str(ca)), extra: String::new() }
}

/// The generated config with `host = "localhost"` (verify-full checks the name).
fn use_localhost(wc: &Walcast) {
    let text = std::fs::read_to_string(&wc.config_path).expect("config");
    let text = text.replacen("host = \"127.0.0.1\"", "host = \"localhost\"", 1);
    std::fs::write(&wc.config_path, text).expect("config");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_streams_over_tls() {
    let ca = env_var("WALCAST_TEST_TLS_CA");
    let db = TestDb::create("tls_full").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE public.t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["public.t"]).await;
    db.create_slot().await;
    let mut wc = Walcast::with_options(&db, &tls_options("verify-full", &ca));
    use_localhost(&wc);
    wc.start();
    exec(&sql, "INSERT INTO public.t VALUES (1, 'over tls')").await;
    let lines = wc.wait_lines(1, WAIT).await;
    assert_eq!(lines[0]["after"]["v"], "over tls");

    // The walsender streaming our slot runs over TLS.
    let admin = db.admin().await;
    let ssl = query_text(
        &admin,
        &format!(
            "SELECT s.ssl::text FROM pg_stat_ssl s JOIN pg_replication_slots r ON r.active_pid = s.pid WHERE r.slot_name = '{}'",
            db.slot
        ),
    )
    .await;
    assert_eq!(ssl.as_deref(), Some("true"), "walsender of the slot is not using TLS");
    wc.stop().await;
    db.drop().await;
}

/// The snapshot reads on a session of its own (a buffered socket under TLS, connected by
/// `connect_sql_bulk`): with verify-full the existing rows arrive, read over TLS.
#[tokio::test(flavor = "multi_thread")]
async fn the_snapshot_reads_over_tls() {
    let ca = env_var("WALCAST_TEST_TLS_CA");
    let db = TestDb::create("tls_snapshot").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE public.t (id int PRIMARY KEY, v text)").await;
    exec(&sql, "INSERT INTO public.t SELECT g, repeat('x', g % 300) FROM generate_series(1, 3000) g").await;
    db.create_publication(&["public.t"]).await;
    let mut wc = Walcast::with_options(&db, &tls_options("verify-full", &ca));
    use_localhost(&wc);
    wc.start();
    let lines = wc.wait_lines(3000, WAIT).await;
    let read: std::collections::BTreeSet<i64> =
        lines.iter().filter(|l| l["op"] == "read").map(|l| l["after"]["id"].as_i64().expect("id")).collect();
    assert_eq!(read, (1..=3000).collect(), "every row, once");
    assert!(lines.iter().all(|l| l["after"]["v"].as_str().map(str::len) == l["after"]["id"].as_i64().map(|id| (id % 300) as usize)));
    wc.stop().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_another_ca_stops_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other_ca = dir.path().join("other-ca.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other CA", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let db = TestDb::create("tls_badca").await;
    db.client().await.batch_execute("CREATE TABLE public.t (id int PRIMARY KEY)").await.expect("create");
    db.create_publication(&["public.t"]).await;
    db.create_slot().await;
    let mut wc = Walcast::with_options(&db, &tls_options("verify-ca", &other_ca.to_string_lossy()));
    wc.start();
    let status = wc.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(3), "log:\n{}", wc.log_tail(20));
    let log = wc.log_tail(20);
    assert!(log.contains("fix:") && log.contains("sslrootcert"), "log:\n{log}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_against_an_ip_address_names_the_field() {
    let ca = env_var("WALCAST_TEST_TLS_CA");
    let db = TestDb::create("tls_ip").await;
    let wc = Walcast::with_options(&db, &tls_options("verify-full", &ca));
    let out = walcast_cmd(&["check", "--config", &wc.config_path.to_string_lossy()]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("source.host"), "{out:?}");
    db.drop().await;
}

/// `openssl ARGS...`, panicking with its output on failure.
fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA in `dir` (ca.pem, ca.key) and a server certificate for CN=localhost it signed, with
/// subjectAltName `san` or none (server.crt, server.key).
fn ca_and_server_certificate(dir: &Path, san: Option<&str>) -> (PathBuf, PathBuf, PathBuf) {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=walcast private CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]);
    openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", &p("server.key"), "-out", &p("server.csr")]);
    // Extensions make it a v3 certificate (webpki rejects v1 ones), with or without a SAN.
    let extensions = match san {
        Some(san) => format!("basicConstraints=CA:FALSE\nsubjectAltName={san}\n"),
        None => "basicConstraints=CA:FALSE\n".to_string(),
    };
    std::fs::write(dir.join("ext.cnf"), extensions).expect("ext.cnf");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("server.crt"),
    ]);
    (dir.join("ca.pem"), dir.join("server.crt"), dir.join("server.key"))
}

/// A private cluster serving TLS with `crt` / `key`.
async fn cluster_with_certificate(name: &str, crt: &Path, key: &Path) -> PrivateCluster {
    let cluster = PrivateCluster::start(name).await;
    let crt = cluster.install_file(crt, "server.crt");
    let key = cluster.install_file(key, "server.key");
    let admin = connect(&cluster.url).await;
    // ALTER SYSTEM cannot share a (implicit) transaction: one statement at a time.
    for (setting, value) in
        [("ssl_cert_file", crt.display().to_string()), ("ssl_key_file", key.display().to_string()), ("ssl", "on".to_string())]
    {
        exec(&admin, &format!("ALTER SYSTEM SET {setting} = '{value}'")).await;
    }
    cluster.reload().await;
    cluster
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_ca_streams_from_an_ip_address_whose_certificate_names_only_a_dns_name() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, crt, key) = ca_and_server_certificate(certs.path(), Some("DNS:localhost"));
    let cluster = cluster_with_certificate("tls-dns-only", &crt, &key).await;
    let db = TestDb::create_on(&cluster.url, "tls_dns_only").await;
    let sql = db.client().await;
    exec(&sql, "CREATE TABLE public.t (id int PRIMARY KEY, v text)").await;
    db.create_publication(&["public.t"]).await;
    db.create_slot().await;
    let mut wc = Walcast::with_options(&db, &tls_options("verify-ca", &ca.to_string_lossy()));
    assert!(std::fs::read_to_string(&wc.config_path).expect("config").contains("host = \"127.0.0.1\""));

    // `check` opens the replication connection too, and it passes.
    let out = walcast_cmd(&["check", "--config", &wc.config_path.to_string_lossy()]).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.lines().any(|l| l.starts_with("ok") && l.contains("replication connection")), "{out}");

    wc.start();
    exec(&sql, "INSERT INTO public.t VALUES (1, 'verify-ca by IP')").await;
    let lines = wc.wait_lines(1, WAIT).await;
    assert_eq!(lines[0]["after"]["v"], "verify-ca by IP");
    let ssl = query_text(
        &db.admin().await,
        &format!(
            "SELECT s.ssl::text FROM pg_stat_ssl s JOIN pg_replication_slots r ON r.active_pid = s.pid WHERE r.slot_name = '{}'",
            db.slot
        ),
    )
    .await;
    assert_eq!(ssl.as_deref(), Some("true"), "walsender of the slot is not using TLS");
    wc.stop().await;
}

/// A certificate without subjectAltName passes verify-ca on the SQL connection (as in libpq)
/// but not on the replication connection (pgwire-replication checks a name even for verify-ca):
/// `check` must find that on the replication connection itself, with the fix, before `run`.
#[tokio::test(flavor = "multi_thread")]
async fn check_tests_the_replication_connection_itself() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, crt, key) = ca_and_server_certificate(certs.path(), None);
    let cluster = cluster_with_certificate("tls-no-san", &crt, &key).await;
    let db = TestDb::create_on(&cluster.url, "tls_no_san").await;
    exec(&db.client().await, "CREATE TABLE public.t (id int PRIMARY KEY)").await;
    db.create_publication(&["public.t"]).await;
    db.create_slot().await;
    let mut wc = Walcast::with_options(&db, &tls_options("verify-ca", &ca.to_string_lossy()));
    let out = walcast_cmd(&["check", "--config", &wc.config_path.to_string_lossy()]).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stdout.lines().any(|l| l.starts_with("ok") && l.contains("connected to")), "the SQL connection passes verify-ca:\n{out}");
    let fail = out
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("replication connection"))
        .unwrap_or_else(|| panic!("no FAIL line for the replication connection:\n{out}"));
    assert!(fail.contains("subjectAltName"), "{fail}");
    let fix = out.stdout.lines().skip_while(|l| *l != fail).nth(1).unwrap_or_default();
    assert!(fix.contains("fix:") && fix.contains("sslmode"), "the fix line: {fix:?}\n{out}");

    // `run` stops the same way.
    wc.start();
    let status = wc.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(3), "log:\n{}", wc.log_tail(20));
    assert!(wc.log_tail(20).contains("subjectAltName"), "log:\n{}", wc.log_tail(20));
}
