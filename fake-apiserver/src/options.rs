//! How to start a [`FakeApi`](crate::FakeApi): the options a test (or the binary's flags)
//! choose, each defaulting to what a plain cluster does.

use crate::pki::Pki;

/// How to start a [`FakeApi`](crate::FakeApi).
#[derive(Debug, Clone)]
pub struct FakeApiOptions {
    pub pki: Pki,
    /// Bearer tokens accepted at start.
    pub tokens: Vec<String>,
    /// Pods `pod-0`..`pod-{n-1}` in `default` at start.
    pub pods: usize,
    /// Demand a client certificate signed by `pki`'s CA; a connection that has one is
    /// authenticated without a token (like the real API server's x509 authenticator).
    pub require_client_cert: bool,
    /// 0 picks a free port.
    pub port: u16,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS to advertise; `None`: Go's default, 250.
    pub max_concurrent_streams: Option<u32>,
    /// GOAWAY an HTTP/2 connection after every n-th response on it (`--goaway-chance`,
    /// made deterministic).
    pub goaway_every: Option<usize>,
    /// Offer only `http/1.1` in ALPN and speak only HTTP/1.1, like a server (or a
    /// TLS-terminating load balancer in front of one) without HTTP/2. Off by default: `h2`
    /// and `http/1.1` are offered, in that order.
    pub http1_only: bool,
    /// Over HTTP/2, hold END_STREAM back on every other response until the serving task
    /// has slept 1 ms after the body (`framing::END_STREAM_PAUSE`): that widens the window
    /// in which a proxy that drops a complete body resets the stream, the race the tests
    /// reproduce. On by default; benchmarks turn it off, since Go's own pause is
    /// microseconds and 1 ms would cap an HTTP/2 client at one connection to about
    /// 1,000 requests a second.
    pub end_stream_pause: bool,
}

impl Default for FakeApiOptions {
    fn default() -> Self {
        FakeApiOptions {
            pki: Pki::new(),
            tokens: Vec::new(),
            pods: 3,
            require_client_cert: false,
            port: 0,
            max_concurrent_streams: None,
            goaway_every: None,
            http1_only: false,
            end_stream_pause: true,
        }
    }
}

impl FakeApiOptions {
    pub fn new(pki: Pki) -> Self {
        FakeApiOptions {
            pki,
            ..Default::default()
        }
    }
    pub fn tokens(mut self, tokens: &[&str]) -> Self {
        self.tokens = tokens.iter().map(|t| t.to_string()).collect();
        self
    }
    pub fn pods(mut self, n: usize) -> Self {
        self.pods = n;
        self
    }
    pub fn require_client_cert(mut self, on: bool) -> Self {
        self.require_client_cert = on;
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    pub fn max_concurrent_streams(mut self, n: u32) -> Self {
        self.max_concurrent_streams = Some(n);
        self
    }
    /// See [`FakeApiOptions::goaway_every`].
    pub fn goaway_every(mut self, n: usize) -> Self {
        self.goaway_every = Some(n);
        self
    }
    /// See [`FakeApiOptions::end_stream_pause`].
    pub fn end_stream_pause(mut self, on: bool) -> Self {
        self.end_stream_pause = on;
        self
    }
    /// See [`FakeApiOptions::http1_only`].
    pub fn http1_only(mut self) -> Self {
        self.http1_only = true;
        self
    }
}
