//! Shutdown signals and the count of work still running.
//!
//! SIGTERM starts a drain: keep serving for `--shutdown-delay` (the app container got its
//! SIGTERM at the same moment and may still call the API while it stops), then stop
//! accepting, end watches cleanly, let in-flight requests and tunnels finish until
//! `--shutdown-grace` runs out, and exit 0. SIGINT skips the delay (a person at a
//! terminal wants it gone). A second signal exits at once.

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// The shared shutdown state, cheap to clone: tokio-util's cancellation token (the stop)
/// and task tracker (the count of connections and tunnels still running).
#[derive(Clone)]
pub struct Shutdown {
    stop: CancellationToken,
    active: TaskTracker,
}

/// The sending side, kept by `run`.
pub(crate) struct Trigger(Shutdown);

/// Held by each connection and tunnel; dropping it counts it out.
pub(crate) type Guard = TaskTrackerToken;

pub(crate) fn channel() -> (Trigger, Shutdown) {
    let shutdown = Shutdown {
        stop: CancellationToken::new(),
        active: TaskTracker::new(),
    };
    (Trigger(shutdown.clone()), shutdown)
}

impl Shutdown {
    /// Counts a connection or tunnel as active until the guard drops.
    pub fn guard(&self) -> Guard {
        self.active.token()
    }

    /// Resolves once the proxy stops (end of the drain delay).
    pub async fn stopping(&self) {
        self.stop.cancelled().await;
    }

    /// A boxed `stopping()`, for a watch body to end on.
    pub fn watches_end(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.stop.clone().cancelled_owned())
    }
}

impl Trigger {
    /// Stops accepting, asks connections to finish, ends watches.
    pub(crate) fn stop(&self) {
        self.0.stop.cancel();
        // From now on `idle` may resolve: nothing new is counted in after the stop
        // except what is already being accepted, which the tracker still waits for.
        self.0.active.close();
    }

    /// Resolves when no connection or tunnel is left (after [`Trigger::stop`]).
    pub(crate) async fn idle(&self) {
        self.0.active.wait().await;
    }

    pub(crate) fn active(&self) -> usize {
        self.0.active.len()
    }
}

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Terminate,
    Interrupt,
}

/// SIGTERM and SIGINT, listened for from the moment this is created: a signal that
/// arrives before (or between) calls to [`Signals::recv`] is kept rather than lost, and
/// never takes the default action (ending the process at once). Create it before
/// announcing that the proxy serves, since scripts may signal as soon as they read that.
pub(crate) struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers now (inside the runtime).
    pub(crate) fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Signals { streams }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub(crate) async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.streams {
            return tokio::select! {
                _ = term.recv() => Signal::Terminate,
                _ = int.recv() => Signal::Interrupt,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Signal::Interrupt
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_guards() {
        let (trigger, shutdown) = channel();
        let g1 = shutdown.guard();
        let g2 = shutdown.guard();
        assert_eq!(trigger.active(), 2);
        let stopping = shutdown.watches_end();
        trigger.stop();
        stopping.await;
        drop(g1);
        assert_eq!(trigger.active(), 1, "one guard still held after the stop");
        let waiter = tokio::spawn(async move { trigger.idle().await });
        drop(g2);
        waiter.await.unwrap();
    }
}
