//! The request log's entries: what arrived, exactly as it arrived (raw target, headers in
//! order, token, client certificate, body digest), for tests to assert on.

use http::{Request, Version};
use sha2::{Digest, Sha256};

use crate::server::ConnInfo;
use hex::encode as hex;

/// One request as the fake API server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request-target exactly as received (raw path and query; for HTTP/2 the `:path`).
    pub uri: String,
    /// The path part of `uri`.
    pub path: String,
    pub query: Option<String>,
    /// `:authority` (HTTP/2) or the absolute-form authority, if any.
    pub authority: Option<String>,
    /// In order received (grouped by name, as `http::HeaderMap` keeps them), lowercase names.
    pub headers: Vec<(String, String)>,
    /// The bearer token presented, valid or not.
    pub token: Option<String>,
    /// CN of the client certificate, if one from
    /// [`Pki::client_cert`](crate::Pki::client_cert) was presented.
    pub client_cn: Option<String>,
    /// Whether the request was authenticated (token, client cert, or public path).
    pub authorized: bool,
    /// The TLS cipher suite of the connection it came on, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub tls_suite: Option<String>,
    pub version: Version,
    pub body_len: u64,
    pub body_sha256: String,
    /// False while a streamed body (`/stream-echo`) is still being read.
    pub body_complete: bool,
}

impl Seen {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub(crate) fn raw_target<B>(req: &Request<B>) -> String {
    if req.version() == Version::HTTP_2 {
        req.uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".into())
    } else {
        req.uri().to_string()
    }
}

pub(crate) fn seen_of<B>(
    req: &Request<B>,
    conn: &ConnInfo,
    token: Option<String>,
    authorized: bool,
) -> Seen {
    Seen {
        method: req.method().to_string(),
        uri: raw_target(req),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        authority: req.uri().authority().map(|a| a.to_string()),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        token,
        client_cn: conn.client_cn.clone(),
        authorized,
        tls_suite: conn.tls_suite.clone(),
        version: req.version(),
        body_len: 0,
        body_sha256: hex(Sha256::digest(b"")),
        body_complete: true,
    }
}
