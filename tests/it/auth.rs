//! Password authentication on both connections (SQL and replication), each on a private cluster
//! whose pg_hba.conf asks one role for md5 or scram-sha-256: `check` passes (it opens the
//! replication connection too), `run` streams, a wrong password fails `check` with the fix.

use crate::support::*;

const PASSWORD: &str = "s3cret pass";

/// A private cluster where role `role` (REPLICATION) logs in with `method` on both kinds of
/// connection; the password is stored with the same method (with `scram-sha-256` stored, the
/// server would answer an md5 line with SCRAM).
async fn cluster_with_password_role(name: &str, role: &str, method: &str) -> PrivateCluster {
    let cluster = PrivateCluster::start(name).await;
    let admin = connect(&cluster.url).await;
    exec(&admin, &format!("SET password_encryption = '{method}'; CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{PASSWORD}'")).await;
    let stored = query_text(&admin, &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")).await.expect("a password");
    let prefix = if method == "md5" { "md5" } else { "SCRAM-SHA-256$" };
    assert!(stored.starts_with(prefix), "{role}'s password is stored as {stored:.16}..., not {method}");
    cluster.prepend_hba(&format!("host all {role} 127.0.0.1/32 {method}\nhost replication {role} 127.0.0.1/32 {method}")).await;
    cluster
}

/// A test database on `cluster` with `public.t` readable by `role`, its publication and slot,
/// and a walcast config that logs in as `role` with the password in a file.
async fn database_for(cluster: &PrivateCluster, test: &str, role: &str, password: &str) -> (TestDb, Walcast) {
    let db = TestDb::create_on(&cluster.url, test).await;
    exec(&db.client().await, &format!("CREATE TABLE public.t (id int PRIMARY KEY, v text); GRANT SELECT ON public.t TO {role}")).await;
    db.create_publication(&["public.t"]).await;
    db.create_slot().await;
    let wc = Walcast::new(&db);
    let password_file = wc.config_path.with_file_name("password");
    std::fs::write(&password_file, password).expect("write password");
    let text = std::fs::read_to_string(&wc.config_path).expect("config");
    let text = text.replacen(
        "user = \"postgres\"\n",
        &format!("user = {}\npassword_file = {}\n", toml_str(role), toml_str(&password_file.to_string_lossy())),
        1,
    );
    assert!(text.contains(&format!("user = \"{role}\"")), "the config did not take the role:\n{text}");
    std::fs::write(&wc.config_path, text).expect("config");
    (db, wc)
}

async fn check(wc: &Walcast) -> CmdOutput {
    walcast_cmd(&["check", "--config", &wc.config_path.to_string_lossy()]).await
}

/// `check` passes with the replication connection among its findings, then `run` streams a row,
/// and the walsender of the slot is the role's.
async fn streams_with_password(method: &str, role: &str) {
    let cluster = cluster_with_password_role(&format!("auth-{method}"), role, method).await;
    let (db, mut wc) = database_for(&cluster, &format!("auth_{}", method.replace('-', "_")), role, PASSWORD).await;
    let out = check(&wc).await;
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.lines().any(|l| l.starts_with("ok") && l.contains("replication connection")), "{out}");

    wc.start();
    exec(&db.client().await, &format!("INSERT INTO public.t VALUES (1, 'by {method}')")).await;
    let lines = wc.wait_lines(1, WAIT).await;
    assert_eq!(lines[0]["after"]["v"], format!("by {method}"), "log:\n{}", wc.log_tail(20));
    let user = query_text(
        &db.admin().await,
        &format!(
            "SELECT a.usename::text FROM pg_stat_activity a JOIN pg_replication_slots r ON r.active_pid = a.pid WHERE r.slot_name = '{}'",
            db.slot
        ),
    )
    .await;
    assert_eq!(user.as_deref(), Some(role));
    wc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn md5_role_streams() {
    streams_with_password("md5", "wc_md5").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_role_streams() {
    streams_with_password("scram-sha-256", "wc_scram").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_md5_password_fails_check_with_the_fix() {
    let cluster = cluster_with_password_role("auth-md5-wrong", "wc_md5", "md5").await;
    let (_db, wc) = database_for(&cluster, "auth_md5_wrong", "wc_md5", "not the password").await;
    let out = check(&wc).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stdout.lines().any(|l| l.starts_with("FAIL") && l.contains("replication connection")), "{out}");
    assert!(out.stdout.contains("password authentication failed"), "{out}");
    assert!(out.stdout.contains("fix:") && out.stdout.contains("password"), "{out}");
}
