//! Watch resume: a response body for JSON watch streams that notes each event's `type` and
//! `object.metadata.resourceVersion` as it passes and, when the upstream stream ends early
//! for a reason that is not the client's (connection reset or closed, GOAWAY, server
//! restart, dead connection, the server's own watch timeout), re-watches from that
//! resourceVersion and keeps writing into the same client response.
//!
//! The stream is never buffered: an event that arrives in one upstream chunk (the API
//! server writes and flushes one event per write, `apiserver/pkg/endpoints/handlers/
//! watch.go`) is passed on as that chunk's own `Bytes`; only an event split across chunks
//! is held (copied) until its newline, so that a break never leaves half an event in front
//! of the resumed stream's first one. Parsing stops at the event's resourceVersion (the
//! first ~200 bytes of a typed object).

mod plan;
mod scan;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;
use crate::metrics::ResumeResult;
use crate::upstream::BoxError;
use plan::with_query;
pub(crate) use plan::{Plan, is_watch_request, resumable_response};
pub(crate) use scan::Scanner;

/// The upstream response body a watch reads: the one place to change when the upstream
/// client's body type changes.
pub(crate) use crate::upstream::UpstreamBody;

/// Resume attempts after one break before giving up.
const MAX_ATTEMPTS: u32 = 8;
/// How long a watch may go without upstream before giving up (when the client set no
/// `timeoutSeconds` that ends it sooner).
const MAX_OUTAGE: Duration = Duration::from_secs(60);
/// First backoff; doubled per attempt up to [`MAX_BACKOFF`], each drawn in `[d/2, d]`
/// (client-go's reflector backs off from 800 ms with jitter; a sidecar's re-watch is one
/// request, so it starts lower).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A stream that lasted this long counts as healthy even without an event.
const HEALTHY: Duration = Duration::from_secs(10);
/// A 410's Status body is read up to this size.
const MAX_STATUS_BODY: usize = 64 * 1024;

/// Why a watch was ended instead of resumed (the stream ends with this error, as it would
/// have with the upstream's own).
#[derive(Debug, thiserror::Error)]
#[error("the watch on {path} could not be resumed after {attempts} attempts: {reason}")]
pub(crate) struct GaveUp {
    path: String,
    attempts: u32,
    reason: String,
}

/// The outcome of one resume request.
enum Attempt {
    Stream(UpstreamBody),
    /// 410 Gone: the ERROR event to give the client.
    Expired(Bytes),
    Retry(String),
    GiveUp(String),
}

enum State {
    Streaming(UpstreamBody),
    Waiting(Pin<Box<Sleep>>),
    Sending(Pin<Box<dyn Future<Output = Attempt> + Send>>),
    /// Frames in `out` go first, then the stream ends (with this error, if any).
    Ending(Option<BoxError>),
    Done,
}

/// How a resumed watch sends its request again: through the proxy's own path (current
/// credentials, `--request-timeout`, error mapping). A trait, so that this module does
/// not depend on the proxy that builds watches.
pub(crate) trait Rewatch: Send + Sync + 'static {
    /// Sends `GET target` with `headers`, with the proxy's credential added when
    /// `ours_auth`: the response, or why there is none (for the log).
    fn rewatch(
        self: Arc<Self>,
        target: Uri,
        headers: HeaderMap,
        ours_auth: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, String>> + Send>>;

    fn metrics(&self) -> &Metrics;
}

/// The client's watch response body: the upstream stream, resumed as needed.
pub(crate) struct Resuming {
    proxy: Arc<dyn Rewatch>,
    plan: Box<Plan>,
    scan: Scanner,
    out: VecDeque<Bytes>,
    state: State,
    /// Armed at the first break when the client set `timeoutSeconds`.
    deadline: Option<Pin<Box<Sleep>>>,
    attempts: u32,
    /// When the upstream went away (the current outage).
    broke_at: Option<Instant>,
    /// When the current upstream stream started.
    since: Instant,
    /// The current stream is a resumed one that has not delivered an event yet.
    fresh: bool,
}

impl Resuming {
    pub(crate) fn new(proxy: Arc<dyn Rewatch>, plan: Plan, body: UpstreamBody) -> Resuming {
        let scan = Scanner::new(plan.start_rv.as_deref());
        Resuming {
            proxy,
            plan: Box::new(plan),
            scan,
            out: VecDeque::new(),
            state: State::Streaming(body),
            deadline: None,
            attempts: 0,
            broke_at: None,
            since: Instant::now(),
            fresh: false,
        }
    }

    fn path(&self) -> &str {
        self.plan.target.path()
    }

    /// The upstream stream ended (`err`: how, if not cleanly).
    fn broke(&mut self, err: Option<BoxError>) {
        let now = Instant::now();
        if self.fresh {
            // A resumed stream that broke again before any event still resumed.
            self.fresh = false;
            self.proxy.metrics().watch_resume(ResumeResult::Resumed);
        }
        // A stream that carried an event or lasted a while was healthy: a new outage.
        // One that a server ends at once, again and again, exhausts the attempts instead
        // of being re-watched for ever.
        if self.scan.stream_lines > 0 || now.saturating_duration_since(self.since) >= HEALTHY {
            self.attempts = 0;
        }
        // A clean end at the client's own deadline is the server honouring timeoutSeconds.
        let timed_out = err.is_none()
            && self
                .plan
                .deadline
                .is_some_and(|d| d.saturating_duration_since(now) < Duration::from_secs(1));
        if timed_out || !self.scan.resumable() {
            // As without resuming: what arrived goes on, then the end the upstream gave.
            if !self.scan.partial.is_empty() {
                self.out.push_back(self.scan.partial.split().freeze());
            }
            self.state = State::Ending(err);
            return;
        }
        match &err {
            Some(e) => tracing::debug!(path = self.path(), "watch stream broke upstream: {e}"),
            None => tracing::debug!(path = self.path(), "watch stream ended upstream"),
        }
        // The resumed stream sends this event again, whole.
        self.scan.partial.clear();
        self.broke_at.get_or_insert(now);
        if let (Some(deadline), None) = (self.plan.deadline, &self.deadline) {
            self.deadline = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
        self.retry_later(now, "the upstream stream ended".to_owned());
    }

    /// Waits a backoff before the next attempt, or gives up.
    fn retry_later(&mut self, now: Instant, reason: String) {
        self.attempts += 1;
        let base = FIRST_BACKOFF
            .saturating_mul(1 << (self.attempts - 1).min(16))
            .min(MAX_BACKOFF);
        let delay = base.mul_f64(0.5 + 0.5 * jitter());
        let mut limit = self.broke_at.unwrap_or(now) + MAX_OUTAGE;
        if let Some(d) = self.plan.deadline {
            limit = limit.min(d);
        }
        if self.attempts > MAX_ATTEMPTS || now + delay >= limit {
            self.give_up(reason);
            return;
        }
        self.state = State::Waiting(Box::pin(tokio::time::sleep(delay)));
    }

    fn give_up(&mut self, reason: String) {
        self.proxy.metrics().watch_resume(ResumeResult::GaveUp);
        let err = GaveUp {
            path: self.path().to_owned(),
            attempts: self.attempts,
            reason,
        };
        tracing::warn!("{err}");
        self.state = State::Ending(Some(Box::new(err)));
    }

    /// Sends the re-watch: same path, the client's query with our position, current
    /// credentials, through the proxy's own send (request timeout, error mapping). The
    /// filter's decision on the original request stands: it judges method, path and host,
    /// and none of them changes.
    fn attempt(&self) -> Pin<Box<dyn Future<Output = Attempt> + Send>> {
        let proxy = self.proxy.clone();
        let query = self.plan.resume_query(&self.scan.rv, Instant::now());
        let target = with_query(&self.plan.target, &query);
        let headers = self.plan.headers.clone();
        let ours_auth = self.plan.ours_auth;
        Box::pin(async move {
            let Some(target) = target else {
                return Attempt::GiveUp("the resumed request target is invalid".to_owned());
            };
            let resp = match proxy.rewatch(target, headers, ours_auth).await {
                Ok(resp) => resp,
                Err(why) => return Attempt::Retry(why),
            };
            let status = resp.status();
            if resumable_response(status, resp.headers()) {
                return Attempt::Stream(resp.into_body());
            }
            match status {
                StatusCode::GONE => Attempt::Expired(expired_event(resp.into_body()).await),
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS => {
                    Attempt::Retry(format!("status {status}"))
                }
                s if s.is_server_error() => Attempt::Retry(format!("status {status}")),
                _ => Attempt::GiveUp(format!("status {status}")),
            }
        })
    }

    fn answered(&mut self, attempt: Attempt) {
        let now = Instant::now();
        match attempt {
            Attempt::Stream(body) => {
                if let Some(at) = self.broke_at.take() {
                    self.proxy
                        .metrics()
                        .watch_gap(now.saturating_duration_since(at));
                }
                tracing::info!(
                    path = self.path(),
                    resource_version = %self.scan.rv,
                    "watch resumed"
                );
                self.since = now;
                self.fresh = true;
                self.scan.new_stream();
                self.plan.added_bookmarks = !self.plan.client_bookmarks;
                self.state = State::Streaming(body);
            }
            Attempt::Expired(line) => {
                self.proxy.metrics().watch_resume(ResumeResult::Expired);
                tracing::info!(
                    path = self.path(),
                    resource_version = %self.scan.rv,
                    "watch cannot resume: resourceVersion too old (410); the client relists"
                );
                self.out.push_back(line);
                self.state = State::Ending(None);
            }
            Attempt::Retry(reason) => self.retry_later(now, reason),
            Attempt::GiveUp(reason) => self.give_up(reason),
        }
    }
}

/// The `ERROR` event the API server sends in a watch for a 410 (its own Status if it gave
/// one, else the one it would give: `apimachinery/pkg/api/errors.NewResourceExpired`).
async fn expired_event(body: UpstreamBody) -> Bytes {
    let status = http_body_util::Limited::new(body, MAX_STATUS_BODY)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
        .filter(|b| {
            serde_json::from_slice::<serde_json::Value>(b)
                .is_ok_and(|v| v.get("kind").and_then(|k| k.as_str()) == Some("Status"))
        });
    let status = status.unwrap_or_else(|| {
        Bytes::from_static(
            br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version","reason":"Expired","code":410}"#,
        )
    });
    let mut line = BytesMut::with_capacity(status.len() + 28);
    line.extend_from_slice(br#"{"type":"ERROR","object":"#);
    line.extend_from_slice(status.trim_ascii());
    line.extend_from_slice(b"}\n");
    line.freeze()
}

/// A number in `[0, 1)`, different on every call: the standard library's per-instance
/// random hash keys, enough for backoff jitter without a random-number crate.
fn jitter() -> f64 {
    use std::hash::BuildHasher as _;
    let h = std::hash::RandomState::new().hash_one(std::time::Instant::now());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Body for Resuming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if let Some(deadline) = this.deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                // timeoutSeconds is up: the end the API server would give.
                this.state = State::Done;
                return Poll::Ready(None);
            }
            match &mut this.state {
                State::Streaming(body) => match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            let swallow = this.plan.added_bookmarks && !this.plan.client_bookmarks;
                            this.scan.feed(data, swallow, &mut this.out);
                            if this.fresh && this.scan.stream_lines > 0 {
                                this.fresh = false;
                                let result = if this.scan.first_is_error {
                                    ResumeResult::Expired
                                } else {
                                    ResumeResult::Resumed
                                };
                                this.proxy.metrics().watch_resume(result);
                            }
                        }
                        // Trailers: a watch has none, but pass them on.
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                    Poll::Ready(Some(Err(e))) => this.broke(Some(e)),
                    Poll::Ready(None) => this.broke(None),
                },
                State::Waiting(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.state = State::Sending(this.attempt());
                }
                State::Sending(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(attempt) => this.answered(attempt),
                },
                State::Ending(err) => {
                    let err = err.take();
                    this.state = State::Done;
                    return Poll::Ready(err.map(Err));
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}
