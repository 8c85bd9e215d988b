use super::*;

#[test]
fn unreadable_consistent_point_is_an_error_not_zero() {
    assert_eq!(consistent_point("s", Some("0/16B3748")).expect("reads"), Lsn(0x16B_3748));
    for bad in [None, Some(""), Some("16B3748"), Some("x/y")] {
        let e = consistent_point("s", bad).expect_err("must not become 0/0");
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("pg_drop_replication_slot"), "{e}");
    }
}

#[test]
fn publication_sql_quotes_everything() {
    let tables = vec![TableSelector::Table { schema: "public".into(), table: "or\"ders".into() }, TableSelector::Schema("shop".into())];
    assert_eq!(
        create_publication_sql("pub", &tables),
        r#"CREATE PUBLICATION "pub" FOR TABLE "public"."or""ders", TABLES IN SCHEMA "shop""#
    );
    assert_eq!(create_publication_sql("p", &[]), r#"CREATE PUBLICATION "p" FOR ALL TABLES"#);
}

fn params(port: u16, sslmode: SslMode) -> ConnParams {
    ConnParams {
        host: "127.0.0.1".into(),
        port,
        database: "app".into(),
        user: "walcast".into(),
        password: None,
        sslmode,
        sslrootcert: None,
        application_name: "walcast".into(),
        connect_timeout: std::time::Duration::from_secs(5),
    }
}

#[tokio::test]
async fn a_connection_lost_during_a_statement_is_retried() {
    let client = fake::client_dropped_at_first_statement().await;
    let e = client.query("SELECT 1", &[]).await.expect_err("the server hung up");
    let classified = classify(&e, &params(1, SslMode::Disable));
    assert!(matches!(classified, SourceError::Connection { .. }), "{classified:?}");
    assert!(classified.is_retryable());
    let classified = classify_query(&e, "listing");
    assert!(classified.is_retryable() && classified.to_string().contains("listing"), "{classified}");
}

#[tokio::test]
async fn a_server_without_tls_is_a_setup_error_when_tls_is_required() {
    let port = fake::serve(fake::Behaviour::RefuseTls).await;
    let e = connect_sql(&params(port, SslMode::Require)).await.expect_err("no TLS there");
    assert!(matches!(e, SourceError::Setup { .. }), "{e:?}");
    assert!(e.to_string().contains("source.sslmode"), "{e}");
}

#[test]
fn a_wal_level_below_logical_is_refused_with_the_fix() {
    assert!(wal_level_problem("logical").is_none());
    let e = wal_level_problem("replica").expect("refused");
    assert!(!e.is_retryable() && e.to_string().contains("ALTER SYSTEM SET wal_level = logical"), "{e}");
}
