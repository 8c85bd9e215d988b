//! TLS on both connections: verify-full streams over TLS (the walsender's session shows ssl),
//! a certificate from another CA stops walcast with exit 3 and the fix, and verify-full against an
//! IP address is a config error naming `source.host`.

mod support;

use std::time::Duration;

use support::*;

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
