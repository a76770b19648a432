//! TLS to the API server: a rustls client configuration whose trust anchors can be
//! swapped at run time.
//!
//! The `ClientConfig` is built once; its certificate verifier delegates to an atomically
//! swapped inner verifier, so when `ca.crt` changes every *new* handshake verifies with
//! the new CA while pooled connections carry on. Session resumption is off: a resumed
//! session skips certificate verification, which would let a connection established
//! under a retired CA outlive the rotation. Roots are the configured CA only, never the
//! system store: a pod talks to exactly one cluster. Cipher suites are offered in Go's
//! order, as kubectl offers them: AES-128-GCM first.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Where the CA bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// A file, re-read when it changes (service-account `ca.crt`, `--certificate-authority`).
    File(PathBuf),
    /// Inline PEM (kubeconfig `certificate-authority-data`).
    Pem(Vec<u8>),
    /// `--insecure-skip-tls-verify`: no verification at all.
    Insecure,
}

impl CaSource {
    pub fn describe(&self) -> String {
        match self {
            CaSource::File(p) => format!("file {}", p.display()),
            CaSource::Pem(_) => "inline data".to_owned(),
            CaSource::Insecure => "none (--insecure-skip-tls-verify)".to_owned(),
        }
    }
}

/// Where a client certificate (mutual TLS) comes from. Exec plugins hand theirs over
/// at run time through [`Tls::set_client_identity`].
#[derive(Clone, PartialEq, Eq)]
pub enum ClientCertSource {
    /// Files, re-read when they change (kubeconfig `client-certificate`/`client-key`).
    Files { cert: PathBuf, key: PathBuf },
    /// Inline PEM (kubeconfig `client-certificate-data`/`client-key-data`).
    Pem { cert: Vec<u8>, key: Vec<u8> },
}

impl fmt::Debug for ClientCertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCertSource::Files { cert, key } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            ClientCertSource::Pem { .. } => f.write_str("Pem([redacted])"),
        }
    }
}

impl ClientCertSource {
    pub fn describe(&self) -> String {
        match self {
            ClientCertSource::Files { cert, .. } => format!("file {}", cert.display()),
            ClientCertSource::Pem { .. } => "inline data".to_owned(),
        }
    }
}

/// Errors building or reloading TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no usable certificate in CA {origin}")]
    NoCertificates { origin: String },
    #[error("invalid certificate in CA {origin}: {reason}")]
    BadCertificate { origin: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot read client {what} {path}: {source}")]
    ReadClient {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid client certificate or key from {origin}: {reason}")]
    BadClientCert { origin: String, reason: String },
}

/// The TLS side of the upstream.
pub struct Tls {
    config: Arc<ClientConfig>,
    verifier: Arc<SwappableVerifier>,
    source: CaSource,
    /// The bytes the current verifier was built from, to skip rebuilding on no change.
    current_pem: std::sync::Mutex<Vec<u8>>,
    client: Arc<ClientIdentity>,
    client_source: Option<ClientCertSource>,
    /// The cert and key bytes the current identity was built from.
    current_client: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Builds the client configuration; reads the CA and client-certificate files once.
    pub fn new(
        source: CaSource,
        client_source: Option<ClientCertSource>,
    ) -> Result<Arc<Self>, TlsError> {
        let mut provider = rustls::crypto::ring::default_provider();
        prefer_aes128(&mut provider.cipher_suites);
        let provider = Arc::new(provider);
        let (inner, pem): (Arc<dyn ServerCertVerifier>, Vec<u8>) = match &source {
            CaSource::Insecure => (
                Arc::new(NoVerification(provider.signature_verification_algorithms)),
                Vec::new(),
            ),
            CaSource::File(path) => {
                let pem = read_ca(path)?;
                (webpki_verifier(&pem, &source, &provider)?, pem)
            }
            CaSource::Pem(pem) => (webpki_verifier(pem, &source, &provider)?, pem.clone()),
        };
        let verifier = Arc::new(SwappableVerifier {
            inner: ArcSwap::from_pointee(Inner(inner)),
            provider: Arc::clone(&provider),
        });
        let client = Arc::new(ClientIdentity {
            current: ArcSwapOption::empty(),
            provider: Arc::clone(&provider),
        });
        let mut client_bytes = (Vec::new(), Vec::new());
        if let Some(src) = &client_source {
            let (cert, key) = read_client(src)?;
            client.set(&cert, &key, &src.describe())?;
            client_bytes = (cert, key);
        }
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(client.clone());
        // ALPN is set by the hyper-rustls connector from the protocols it enables.
        config.resumption = Resumption::disabled();
        Ok(Arc::new(Tls {
            config: Arc::new(config),
            verifier,
            source,
            current_pem: std::sync::Mutex::new(pem),
            client,
            client_source,
            current_client: std::sync::Mutex::new(client_bytes),
        }))
    }

    /// Presents this certificate from the next handshake on (exec plugin results).
    pub fn set_client_identity(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        self.client.set(cert_pem, key_pem, "the exec plugin")
    }

    pub fn client_source(&self) -> Option<&ClientCertSource> {
        self.client_source.as_ref()
    }

    /// Every file whose change matters (CA, client certificate and key).
    pub fn watched_files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = self.watched_file().into_iter().collect();
        if let Some(ClientCertSource::Files { cert, key }) = &self.client_source {
            files.push(cert);
            files.push(key);
        }
        files
    }

    /// Re-reads client certificate files; on change, new handshakes present the new
    /// pair. Keeps the old one when the new files are unreadable or do not match.
    pub fn reload_client_blocking(&self) -> Result<bool, TlsError> {
        let Some(src @ ClientCertSource::Files { .. }) = &self.client_source else {
            return Ok(false);
        };
        let (cert, key) = read_client(src)?;
        let mut current = self
            .current_client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 == cert && current.1 == key {
            return Ok(false);
        }
        self.client.set(&cert, &key, &src.describe())?;
        *current = (cert, key);
        Ok(true)
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    pub fn source(&self) -> &CaSource {
        &self.source
    }

    /// The CA file to watch, if any.
    pub fn watched_file(&self) -> Option<&Path> {
        match &self.source {
            CaSource::File(p) => Some(p),
            _ => None,
        }
    }

    /// Re-reads a CA file; on change, new handshakes use it. Keeps the old CA when the
    /// new one cannot be read or parsed. Returns whether it changed. Blocking file I/O.
    pub fn reload_blocking(&self) -> Result<bool, TlsError> {
        let CaSource::File(path) = &self.source else {
            return Ok(false);
        };
        let pem = read_ca(path)?;
        // The lock is taken only here, by the one reload task: never on a request path.
        let mut current = self
            .current_pem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *current == pem {
            return Ok(false);
        }
        let verifier = webpki_verifier(&pem, &self.source, &self.verifier.provider)?;
        self.verifier.inner.store(Arc::new(Inner(verifier)));
        *current = pem;
        Ok(true)
    }
}

fn read_client(src: &ClientCertSource) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    match src {
        ClientCertSource::Pem { cert, key } => Ok((cert.clone(), key.clone())),
        ClientCertSource::Files { cert, key } => {
            let read = |what, path: &PathBuf| {
                std::fs::read(path).map_err(|source| TlsError::ReadClient {
                    what,
                    path: path.clone(),
                    source,
                })
            };
            Ok((read("certificate", cert)?, read("key", key)?))
        }
    }
}

/// The client certificate presented to the API server, swappable at run time.
#[derive(Debug)]
struct ClientIdentity {
    current: ArcSwapOption<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl ClientIdentity {
    fn set(&self, cert_pem: &[u8], key_pem: &[u8], origin: &str) -> Result<(), TlsError> {
        let bad = |reason: String| TlsError::BadClientCert {
            origin: origin.to_owned(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if chain.is_empty() {
            return Err(bad("no certificate in the PEM data".to_owned()));
        }
        // The key's parse error is not shown: it could quote key material.
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| bad("no usable private key in the PEM data".to_owned()))?;
        let certified =
            CertifiedKey::from_der(chain, key, &self.provider).map_err(|e| bad(e.to_string()))?;
        self.current.store(Some(Arc::new(certified)));
        Ok(())
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}

/// Orders the suites as Go's crypto/tls does on CPUs with AES instructions (kubectl's
/// order; Go's `defaultCipherSuitesTLS13`): AES-128-GCM, then AES-256-GCM, then
/// ChaCha20-Poly1305, TLS 1.3 before TLS 1.2. ring's default offers AES-256 first, and a
/// server that honours the client's order (rustls's does) then spends 14 AES rounds per
/// block instead of 10 on every byte of every LIST, on both sides, for no security a
/// 128-bit key lacks.
fn prefer_aes128(suites: &mut [rustls::SupportedCipherSuite]) {
    use rustls::CipherSuite as C;
    suites.sort_by_key(|s| {
        let tls12 = matches!(s, rustls::SupportedCipherSuite::Tls12(_));
        let cipher = match s.suite() {
            C::TLS13_AES_128_GCM_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            C::TLS13_AES_256_GCM_SHA384
            | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        };
        (tls12, cipher)
    });
}

fn read_ca(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadCa {
        path: path.to_owned(),
        source,
    })
}

fn webpki_verifier(
    pem: &[u8],
    source: &CaSource,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let origin = || source.describe();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::BadCertificate {
            origin: origin(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            origin: origin(),
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificates { origin: origin() });
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .map_err(|e| TlsError::BadCertificate {
            origin: origin(),
            reason: e.to_string(),
        })
}

#[derive(Debug)]
struct Inner(Arc<dyn ServerCertVerifier>);

/// Delegates to whichever verifier is current.
#[derive(Debug)]
struct SwappableVerifier {
    inner: ArcSwap<Inner>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SwappableVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.load().0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .load()
            .0
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .load()
            .0
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `--insecure-skip-tls-verify`: any certificate is accepted, but the handshake
/// signatures are still checked against it (the peer must hold the key it presents).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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
    use rustls::CipherSuite as C;

    #[test]
    fn suites_are_offered_in_kubectls_order() {
        let tls = Tls::new(CaSource::Insecure, None).unwrap();
        let offered = &tls.config.crypto_provider().cipher_suites;
        let names: Vec<C> = offered.iter().map(|s| s.suite()).collect();
        assert_eq!(
            names[..3],
            [
                C::TLS13_AES_128_GCM_SHA256,
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        let first12 = offered
            .iter()
            .position(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .unwrap();
        assert!(
            matches!(
                names[first12],
                C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                    | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            ),
            "{names:?}"
        );
        let codes = |suites: &[rustls::SupportedCipherSuite]| {
            let mut v: Vec<u16> = suites.iter().map(|s| u16::from(s.suite())).collect();
            v.sort_unstable();
            v
        };
        let all = rustls::crypto::ring::default_provider().cipher_suites;
        assert_eq!(
            codes(offered),
            codes(&all),
            "reordered, none added or dropped"
        );
    }
}
