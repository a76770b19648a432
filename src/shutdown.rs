//! Shutdown signals and the count of work still running.
//!
//! SIGTERM starts a drain: keep serving for `--shutdown-delay` (the app container got its
//! SIGTERM at the same moment and may still call the API while it stops), then stop
//! accepting, end watches cleanly, let in-flight requests and tunnels finish until
//! `--shutdown-grace` runs out, and exit 0. SIGINT skips the delay (a person at a
//! terminal wants it gone). A second signal exits at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

/// The shared shutdown state, cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    stopping: watch::Receiver<bool>,
    active: Arc<Active>,
}

/// The sending side, kept by `run`.
pub struct Trigger {
    tx: watch::Sender<bool>,
    active: Arc<Active>,
}

struct Active {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by each connection and tunnel; dropping it counts it out.
pub struct Guard(Arc<Active>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    let active = Arc::new(Active {
        count: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    (
        Trigger {
            tx,
            active: active.clone(),
        },
        Shutdown {
            stopping: rx,
            active,
        },
    )
}

impl Shutdown {
    /// Counts a connection or tunnel as active until the guard drops.
    pub fn guard(&self) -> Guard {
        self.active.count.fetch_add(1, Ordering::AcqRel);
        Guard(self.active.clone())
    }

    /// Resolves once the proxy stops (end of the drain delay).
    pub async fn stopping(&self) {
        let mut rx = self.stopping.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// A boxed `stopping()`, for a watch body to end on.
    pub fn watches_end(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut rx = self.stopping.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    }
}

impl Trigger {
    /// Stops accepting, asks connections to finish, ends watches.
    pub fn stop(&self) {
        let _ = self.tx.send(true);
    }

    /// Resolves when no connection or tunnel is left.
    pub async fn idle(&self) {
        loop {
            let notified = self.active.idle.notified();
            if self.active.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn active(&self) -> usize {
        self.active.count.load(Ordering::Acquire)
    }
}

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
}

/// SIGTERM and SIGINT, listened for from the moment this is created: a signal that
/// arrives before (or between) calls to [`Signals::recv`] is kept rather than lost, and
/// never takes the default action (ending the process at once). Create it before
/// announcing that the proxy serves, since scripts may signal as soon as they read that.
pub struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers now (inside the runtime).
    pub fn new() -> Signals {
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
    pub async fn recv(&mut self) -> Signal {
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
        trigger.idle().await;
        let g1 = shutdown.guard();
        let g2 = shutdown.guard();
        assert_eq!(trigger.active(), 2);
        let stopping = shutdown.watches_end();
        trigger.stop();
        stopping.await;
        drop(g1);
        let waiter = tokio::spawn(async move { trigger.idle().await });
        drop(g2);
        waiter.await.unwrap();
    }
}
