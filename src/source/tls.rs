//! TLS for the SQL connection (rustls, ring provider), matching libpq's sslmode semantics:
//! `require` encrypts without verifying, `verify-ca` checks the chain, `verify-full` also the name.
//! The replication connection gets the same mode through pgwire-replication's own TLS settings;
//! for `verify-ca` it also needs the name that [`verify_ca_server_name`] finds.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::{ConnParams, SourceError};
use crate::config::SslMode;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the rustls client config for `mode` (not for `disable`).
pub(crate) fn client_config(mode: SslMode, root_cert: Option<&Path>) -> Result<ClientConfig, String> {
    with_verifier(verifier(mode, root_cert)?)
}

fn with_verifier(verifier: Arc<dyn ServerCertVerifier>) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// The certificate check that `mode` means.
fn verifier(mode: SslMode, root_cert: Option<&Path>) -> Result<Arc<dyn ServerCertVerifier>, String> {
    Ok(match mode {
        SslMode::Disable | SslMode::Require => Arc::new(AcceptAnyCertificate { provider: provider() }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = root_cert.ok_or("sslrootcert is required for verify-ca and verify-full")?;
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{} holds no certificate", path.display()));
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(|e| e.to_string())?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { inner: webpki })
            }
        }
    })
}

/// `sslmode=require`: encrypted, server not authenticated (libpq's meaning of `require`).
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to the CA; the host name is not checked.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Postgres' SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// For `verify-ca` on the replication connection: the TLS server name to give
/// pgwire-replication, or `None` when the configured host is already named in the certificate.
///
/// pgwire-replication's verify-ca check forgives only rustls' old `NotValidForName` error, not
/// the `NotValidForNameContext` that rustls 0.23 returns, so it rejects a certificate that does
/// not name the host (an IP host and a certificate for a DNS name), which libpq and the SQL
/// connection accept. So the certificate is fetched once with this module's verify-ca check
/// (chain against `sslrootcert`, no name), and a name it carries becomes the server name of the
/// replication connection, which then checks the chain again itself: only the name check,
/// which verify-ca does not ask for, is made to pass.
pub(crate) async fn verify_ca_server_name(params: &ConnParams) -> Result<Option<String>, SourceError> {
    let tls_failed = |reason: String| {
        SourceError::setup(
            format!("TLS with {} failed: {reason}", params.display()),
            "check source.sslmode and that source.sslrootcert is the CA that signed the server certificate",
        )
    };
    let lost = |reason: String| SourceError::Connection { target: params.display(), reason };
    let inner = verifier(SslMode::VerifyCa, params.sslrootcert.as_deref()).map_err(tls_failed)?;
    let capture = Arc::new(CaptureCertificate { inner, end_entity: Mutex::new(None) });
    let config = with_verifier(Arc::clone(&capture) as Arc<dyn ServerCertVerifier>).map_err(tls_failed)?;
    let host = ServerName::try_from(params.host.clone())
        .map_err(|e| tls_failed(format!("source.host {:?} is neither a host name nor an IP address: {e}", params.host)))?;
    let handshake = async {
        let mut tcp = tokio::net::TcpStream::connect((params.host.as_str(), params.port)).await.map_err(|e| lost(e.to_string()))?;
        let peer = tcp.peer_addr().ok().map(|a| a.ip());
        tcp.write_all(&SSL_REQUEST).await.map_err(|e| lost(e.to_string()))?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(|e| lost(e.to_string()))?;
        if answer[0] != b'S' {
            return Err(SourceError::setup(
                format!("{} does not accept TLS connections", params.display()),
                "turn ssl on in the server's postgresql.conf, or set source.sslmode = \"disable\"",
            ));
        }
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(host.clone(), tcp).await.map_err(|e| {
            let bad_certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
            if bad_certificate {
                tls_failed(e.to_string())
            } else {
                lost(format!("TLS handshake: {e}"))
            }
        })?;
        // Only the certificate was wanted; the server forgets a session without a startup packet
        // silently.
        let _ = tls.shutdown().await;
        Ok(peer)
    };
    let peer = tokio::time::timeout(params.connect_timeout, handshake)
        .await
        .map_err(|_| lost(format!("no answer within {} ms", params.connect_timeout.as_millis())))??;
    let certificate = capture.end_entity.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let certificate = certificate.ok_or_else(|| lost("the TLS handshake ended without a server certificate".into()))?;
    name_in_certificate(&certificate, &host, peer).map_err(|reason| {
        SourceError::setup(
            format!("TLS with {}: {reason}", params.display()),
            "give the server a certificate whose subjectAltName names its DNS name or IP address, or set source.sslmode = \"require\" (encrypted, server not verified)",
        )
    })
}

/// `None` when `host` is named in the certificate, else a DNS name it carries (a wildcard
/// filled in), else the server's address when the certificate names that.
fn name_in_certificate(certificate: &CertificateDer<'_>, host: &ServerName<'_>, peer: Option<IpAddr>) -> Result<Option<String>, String> {
    let cert = webpki::EndEntityCert::try_from(certificate).map_err(|e| format!("cannot parse the server certificate: {e}"))?;
    let names = |name: &ServerName<'_>| cert.verify_is_valid_for_subject_name(name).is_ok();
    if names(host) {
        return Ok(None);
    }
    let dns = cert.valid_dns_names().map(|n| match n.strip_prefix("*.") {
        Some(domain) => format!("walcast.{domain}"),
        None => n.to_string(),
    });
    for candidate in dns.chain(peer.map(|ip| ip.to_string())) {
        if ServerName::try_from(candidate.as_str()).is_ok_and(|name| names(&name)) {
            return Ok(Some(candidate));
        }
    }
    Err("the server certificate has no subjectAltName with a DNS name or the server's IP address, which the replication connection needs even for verify-ca".into())
}

/// Runs another verifier and keeps the server certificate it accepted.
#[derive(Debug)]
struct CaptureCertificate {
    inner: Arc<dyn ServerCertVerifier>,
    end_entity: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for CaptureCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        *self.end_entity.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(end_entity.clone().into_owned());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// tokio-postgres connector over rustls.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    pub(crate) fn new(config: ClientConfig) -> Self {
        Self { config: Arc::new(config) }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_string()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect { config: Arc::clone(&self.config), name })
    }
}

/// One pending TLS handshake.
pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config).connect(self.name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream for tokio-postgres.
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding is optional unless the server demands it; walcast does not offer it.
        ChannelBinding::none()
    }
}
