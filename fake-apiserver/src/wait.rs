//! Bounded waits: every wait in the fake (a port to be free again, a request, a gauge) and
//! in the tests is on an event; [`within`] only turns a hang into a readable failure.

use std::future::Future;
use std::time::Duration;

/// How long any `wait_*` helper waits before failing the test. Generous because CI
/// machines are small and the proxy binary may be started cold.
pub const WAIT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`WAIT`]: every wait in
/// the tests is on an event, and this bound only turns a hang into a readable failure.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}
