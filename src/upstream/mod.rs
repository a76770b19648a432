//! The client side: requests to the API server and their responses.
//!
//! Two pools (the protocol is chosen per request by `proxy`, `--upstream-http2`):
//! hyper-util's pooled HTTP/1.1 client, where every request has a connection of its own
//! (fastest for short requests against Go's server, see the README's Performance
//! section), and `h2pool`, HTTP/2 on the `h2` crate, which carries watches and other
//! long-running requests many to a connection. Both dial with `connector`.

pub(crate) mod body;
pub(crate) mod connector;
pub(crate) mod h2pool;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub(crate) use body::{BoxError, RequestBody, idempotent, request};
pub(crate) use connector::{
    ConnectOptions, Connector, connector, connector_h2, dial_http1, origin_form,
};
use h2pool::RecvBody;

/// The HTTP/1.1 pool.
pub(crate) type UpstreamClient = Client<Connector, RequestBody>;

/// The pooled client for ordinary requests. A connection idle for `idle_bound`
/// (`--upstream-ping-interval`) is closed, not reused: HTTP/1.1 has no ping to prove an
/// idle connection alive, and one that a NAT or a frozen peer has silently dropped would
/// take the next request down with it. hyper-util checks the bound at checkout as well as
/// in its reaper (`Idle::pop` in its `client/legacy/pool.rs`), so an expired connection is
/// never handed out even between two sweeps. Go's `http.Transport`, kubectl's, keeps idle
/// connections 90 s (`IdleConnTimeout`); the bound here matches the HTTP/2 side instead,
/// where a connection silent that long is pinged before it is trusted.
pub(crate) fn client(connector: Connector, idle_bound: Duration) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_bound)
        .pool_max_idle_per_host(256)
        // Every request already carries the Host the proxy set (`Proxy::host`); hyper-util's
        // own would clone the URI to look for it.
        .set_host(false)
        .build(connector)
}

/// A response body from the API server: over either protocol, or a JSON watch that is
/// resumed when its upstream stream ends early (`watch`). The resumed watch is boxed as
/// a trait object so that this module need not know `watch`, which sits above it: the
/// one virtual call per frame is on watch events only.
pub enum UpstreamBody {
    Http1(Incoming),
    Http2(RecvBody),
    Resumed(Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Http2(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Resumed(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(b) => b.is_end_stream(),
            UpstreamBody::Http2(b) => b.is_end_stream(),
            UpstreamBody::Resumed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(b) => b.size_hint(),
            UpstreamBody::Http2(b) => b.size_hint(),
            UpstreamBody::Resumed(b) => b.size_hint(),
        }
    }
}
