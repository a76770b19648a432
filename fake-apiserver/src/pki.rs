//! Certificates minted at test time with rcgen: a CA, a server certificate for the fake API
//! server, and client certificates for mutual-TLS tests (the fake verifies them and names
//! their CN in its request log). Nothing is checked in, so no test can break because a
//! fixture expired.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The SANs of the default server certificate: what a client may dial the fake API by
/// (the loopback addresses, and the in-cluster service name the proxy might verify against).
pub const SERVER_SANS: &[&str] = &["127.0.0.1", "::1", "localhost", "kubernetes.default.svc"];

/// Distinguishes CAs minted in the same process, so that an "old" and a "new" CA never share
/// a subject name (a verifier could otherwise pick the wrong issuer and the failure would be
/// about signatures rather than trust).
static SERIAL: AtomicU64 = AtomicU64::new(1);

/// A CA plus a server certificate it signed. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Pki(Arc<Inner>);

struct Inner {
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    server_der: CertificateDer<'static>,
    server_pem: String,
    server_key_der: Vec<u8>,
    server_key_pem: String,
    /// Client certificates issued so far, by DER, so the fake API server can name the peer
    /// (there is no X.509 parser among the dependencies to read the CN back).
    clients: Mutex<HashMap<Vec<u8>, String>>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A fresh CA and a server certificate with [`SERVER_SANS`].
    pub fn new() -> Pki {
        Self::with_sans(SERVER_SANS)
    }

    /// A fresh CA and a server certificate for exactly `sans` (IP literals become IP SANs,
    /// anything else a DNS SAN), e.g. to test hostname verification failures.
    pub fn with_sans(sans: &[&str]) -> Pki {
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);

        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("kube-ambassador test CA {n}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let ca = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(Vec::<String>::new()).expect("server params");
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*s).try_into().expect("DNS SAN")),
            })
            .collect();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kube-apiserver {n}"));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let server_key = KeyPair::generate().expect("generate server key");
        let server = params
            .signed_by(&server_key, &ca)
            .expect("sign server cert");

        Pki(Arc::new(Inner {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            ca,
            server_pem: server.pem(),
            server_der: server.der().clone(),
            server_key_der: server_key.serialize_der(),
            server_key_pem: server_key.serialize_pem(),
            clients: Mutex::new(HashMap::new()),
        }))
    }

    /// The CA certificate, PEM (what goes into `ca.crt`).
    pub fn ca_pem(&self) -> String {
        self.0.ca_pem.clone()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.0.ca_der.clone()
    }

    /// The server's chain as rustls wants it (leaf only: clients trust the CA directly).
    pub fn server_cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.0.server_der.clone()]
    }

    /// The server's private key as rustls wants it.
    pub fn server_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.0.server_key_der.clone()))
    }

    /// The server certificate, PEM.
    pub fn server_cert_pem(&self) -> String {
        self.0.server_pem.clone()
    }

    /// The server key, PKCS#8 PEM.
    pub fn server_key_pem(&self) -> String {
        self.0.server_key_pem.clone()
    }

    /// A client certificate (CN = `cn`, clientAuth) signed by this CA: `(cert_pem, key_pem)`.
    pub fn client_cert(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate client key");
        let cert = params
            .signed_by(&key, &self.0.ca)
            .expect("sign client cert");
        self.0
            .clients
            .lock()
            .unwrap()
            .insert(cert.der().to_vec(), cn.to_owned());
        (cert.pem(), key.serialize_pem())
    }

    /// The CN a certificate from [`Pki::client_cert`] was issued for.
    pub fn client_cn(&self, der: &[u8]) -> Option<String> {
        self.0.clients.lock().unwrap().get(der).cloned()
    }

    /// Writes the CA PEM to `path` (e.g. for `--certificate-authority`).
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, self.ca_pem()).expect("write CA file");
    }

    /// Whether two handles share the same CA.
    pub fn same_ca(&self, other: &Pki) -> bool {
        self.0.ca_der == other.0.ca_der
    }
}
