//! TLS to `https://` mirrors: the rustls client configuration a mirror's [`TlsSpec`] asks for,
//! built once when the agent starts (so an unreadable CA file or key is a one-line error then,
//! exit 2), and the handshake on each new connection, whose failures are counted by reason.
//!
//! Trust: the CA file's certificates when `ca=` is given, else the system's store
//! (rustls-native-certs: `/etc/ssl/certs` and the `SSL_CERT_FILE`/`SSL_CERT_DIR` variables);
//! `insecure=true` accepts any certificate but still checks the handshake's signatures. The
//! server name sent (SNI) and verified is `sni=`, else the URL's host (an IP address is verified
//! against the certificate's IP addresses and not sent). ALPN offers `http/1.1`, the only
//! protocol the mirrors are spoken to in.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::spec::TlsSpec;

/// How a handshake failed, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The server's certificate was refused (unknown issuer, expired, wrong name, ...).
    Certificate,
    /// The server sent an alert (it refused us: no client certificate, no common protocol).
    Alert,
    /// Anything else: a protocol error, the connection closed or reset mid-handshake.
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 3] = [Self::Certificate, Self::Alert, Self::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Alert => "alert",
            Self::Other => "other",
        }
    }

    fn of(e: &std::io::Error) -> Self {
        Self::refusal(e).unwrap_or(Self::Other)
    }

    /// A TLS refusal inside an I/O error of an established connection: with TLS 1.3 the client
    /// finishes its handshake before the server has checked the client's certificate, so a
    /// server that refuses it says so with an alert on the first read.
    pub fn refusal(e: &std::io::Error) -> Option<Self> {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(_)) => Some(Self::Certificate),
            Some(rustls::Error::AlertReceived(_)) => Some(Self::Alert),
            _ => None,
        }
    }
}

/// What connects to one `https://` mirror.
#[derive(Clone)]
pub struct MirrorTls {
    config: Arc<ClientConfig>,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for MirrorTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl MirrorTls {
    /// The client configuration for a mirror at `host` with `spec`; a one-line reason when a
    /// file cannot be read or holds nothing usable.
    pub fn new(host: &str, spec: &TlsSpec) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = if spec.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                    provider.signature_verification_algorithms,
                )))
        } else {
            builder.with_root_certificates(roots(spec.ca.as_deref())?)
        };
        let mut config = match &spec.client_auth {
            Some((cert, key)) => {
                let chain = certificates(cert, "cert")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("cert and key: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = spec.sni.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| format!("`{name}` is not a server name"))?;
        let config = Arc::new(config);
        Ok(Self {
            connector: TlsConnector::from(config.clone()),
            config,
            server_name,
        })
    }

    /// The same client offering ALPN `h2` only (RFC 9113 3.2): for HTTP/2 copies.
    pub fn for_h2(&self) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        Self {
            connector: TlsConnector::from(config.clone()),
            config,
            server_name: self.server_name.clone(),
        }
    }

    /// The TLS handshake on a connected socket.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, (HandshakeFailure, std::io::Error)> {
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| (HandshakeFailure::of(&e), e))
    }
}

/// The CA file's certificates, or the system's.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(file) => {
            for cert in certificates(file, "ca")? {
                store
                    .add(cert)
                    .map_err(|e| format!("ca {}: {e}", file.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no CA certificates in the system store{}: give ca=FILE",
                    found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    Ok(store)
}

/// Every certificate of a PEM file; at least one.
fn certificates(file: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            file.display()
        ));
    }
    Ok(certs)
}

/// `insecure=true`: any certificate is accepted; the handshake's signatures are still checked
/// (with the certificate's key), so the connection is at least to whoever holds that key.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_files_are_one_line_errors() {
        let spec = |ca: &str| TlsSpec {
            ca: Some(ca.into()),
            ..TlsSpec::default()
        };
        let e = MirrorTls::new("h", &spec("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.starts_with("ca /nonexistent/ca.pem: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = MirrorTls::new("h", &spec("/etc/hostname")).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = MirrorTls::new(
            "h",
            &TlsSpec {
                insecure: true,
                client_auth: Some(("/nonexistent/c.pem".into(), "/k.pem".into())),
                ..TlsSpec::default()
            },
        )
        .unwrap_err();
        assert!(e.starts_with("cert /nonexistent/c.pem"), "{e}");
        // An IP address is a server name too (verified against the certificate's addresses).
        assert!(
            MirrorTls::new(
                "127.0.0.1",
                &TlsSpec {
                    insecure: true,
                    ..TlsSpec::default()
                }
            )
            .is_ok()
        );
    }
}
