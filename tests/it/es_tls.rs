//! TLS to Elasticsearch with a CA file: a TLS endpoint speaking the Elasticsearch root API
//! (certificate for localhost from scripts/test-env's throwaway CA) is reachable with
//! `ca_file` set to that CA and refused without it. (The stand-in servers speak plain HTTP only.)

use std::path::PathBuf;
use std::sync::Arc;

use crate::support::es::*;
use crate::support::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ROOT: &str = r#"{"name":"tls-fake","cluster_name":"fake","version":{"number":"8.15.3","distribution":"elasticsearch"},"tagline":"You Know, for Search"}"#;

/// A TLS server answering `GET /` with an Elasticsearch root document and 404 otherwise.
async fn tls_endpoint() -> u16 {
    let dir = PathBuf::from(env_var("WALCAST_TEST_TLS_CA")).parent().expect("tls dir").to_path_buf();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("server.crt")).expect("server.crt").collect::<Result<_, _>>().expect("certs");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let root = buf.starts_with(b"GET / ");
                let (status, body) = if root {
                    ("200 OK", ROOT)
                } else {
                    ("404 Not Found", r#"{"error":{"type":"index_not_found_exception","reason":"no such index"},"status":404}"#)
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn https_with_a_ca_file() {
    let port = tls_endpoint().await;
    let db = TestDb::create("es_tls").await;
    exec(&db.client().await, "CREATE TABLE t (id int PRIMARY KEY)").await;
    db.create_publication(&["t"]).await;
    db.create_slot().await;
    let rule = "[[sinks.elasticsearch.tables]]\ntable = \"public.t\"\nindex = \"t\"\n";
    let url = format!("https://localhost:{port}");
    let ca = env_var("WALCAST_TEST_TLS_CA");

    let with_ca =
        Walcast::with_options(&db, &Options { extra: es_section(&url, &format!("ca_file = {ca:?}\n{rule}")), ..Options::default() });
    let out = walcast_cmd(&["check", "--config", &with_ca.config_path.to_string_lossy()]).await;
    assert!(out.stdout.contains(&format!("ok    elasticsearch: {url} reachable (Elasticsearch 8.15.3)")), "{out}");

    let without = Walcast::with_options(&db, &Options { extra: es_section(&url, rule), ..Options::default() });
    let out = walcast_cmd(&["check", "--config", &without.config_path.to_string_lossy()]).await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stdout.contains("FAIL  elasticsearch: cannot reach") && out.stdout.to_lowercase().contains("certificate"), "{out}");
    db.drop().await;
}
