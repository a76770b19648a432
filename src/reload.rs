//! Noticing that the token or CA changed on disk, and reloading them off the request path.
//!
//! The kubelet rotates service-account files with its atomic writer: it fills a new
//! timestamped directory, then renames a `..data_tmp` symlink over `..data`. A watch on
//! the file itself misses that (the inode it watches never changes), so we watch the
//! *directory* with inotify: the rename arrives as an event within microseconds, and the
//! next request already carries the new token. A slow periodic re-read backs the watch
//! up (file systems without inotify, a watch lost when a directory is replaced).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::credentials::{Credentials, Reload};
use crate::tls::Tls;

/// How often files are re-read regardless of events.
#[cfg(target_os = "linux")]
const SAFETY_NET: Duration = Duration::from_secs(10);
#[cfg(not(target_os = "linux"))]
const SAFETY_NET: Duration = Duration::from_secs(1);

/// Observes reload outcomes (metrics hook up here).
pub(crate) trait ReloadObserver: Send + Sync + 'static {
    fn token_reloaded(&self, _outcome: Reload) {}
    fn ca_reloaded(&self, _ok: bool) {}
    /// The current token's `iat` and `exp` (Unix seconds), when it has them.
    fn token_times(&self, _issued: Option<i64>, _expiry: Option<i64>) {}
}

impl ReloadObserver for () {}

/// Another file re-read by the same watcher when its directory changes (`--policy`; a
/// ConfigMap volume swaps its `..data` symlink like the token's).
pub(crate) trait Watched: Send + Sync + 'static {
    fn watched_file(&self) -> &Path;
    /// Re-reads the file; keeps what it had if the file is bad (and says so).
    fn reload_blocking(&self);
}

/// Starts the reload task if anything can change; returns `None` when nothing can.
pub(crate) fn spawn(
    creds: Arc<Credentials>,
    tls: Option<Arc<Tls>>,
    observer: Arc<dyn ReloadObserver>,
    others: Vec<Arc<dyn Watched>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut files: Vec<&Path> = creds.watched_file().into_iter().collect();
    if let Some(tls) = tls.as_deref() {
        files.extend(tls.watched_files());
    }
    files.extend(others.iter().map(|o| o.watched_file()));
    for file in files {
        let dir = parent_dir(file);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    if dirs.is_empty() {
        return None;
    }
    // Once at start too (before the proxy announces itself): a token already past 90% of
    // its lifetime should not wait for the first safety-net tick to be reported.
    let mut warned_for: Option<i64> = None;
    warn_if_not_rotated(&creds, &mut warned_for);
    // Watching before the proxy announces itself: a rotation right after the start-up
    // line is seen at once, not at the next periodic re-read.
    let mut events = DirEvents::new(&dirs);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAFETY_NET);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = events.next() => {}
                _ = tick.tick() => warn_if_not_rotated(&creds, &mut warned_for),
            }
            let (creds, tls, observer) = (creds.clone(), tls.clone(), observer.clone());
            let others = others.clone();
            let _ = tokio::task::spawn_blocking(move || {
                reload_all(&creds, tls.as_deref(), &*observer);
                for other in &others {
                    other.reload_blocking();
                }
            })
            .await;
        }
    }))
}

fn reload_all(creds: &Credentials, tls: Option<&Tls>, observer: &dyn ReloadObserver) {
    let outcome = creds.reload_blocking();
    if outcome != Reload::Unchanged {
        observer.token_reloaded(outcome);
    }
    if outcome == Reload::Changed {
        let times = creds.token_times();
        observer.token_times(times.issued, times.expiry);
    }
    if let Some(tls) = tls {
        match tls.reload_blocking() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(source = %tls.source().describe(), "CA changed on disk; new connections verify with it");
                observer.ca_reloaded(true);
            }
            Err(e) => {
                tracing::warn!("{e}; keeping the previous CA");
                observer.ca_reloaded(false);
            }
        }
        match tls.reload_client_blocking() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!("client certificate changed on disk; new connections present it")
            }
            Err(e) => tracing::warn!("{e}; keeping the previous client certificate"),
        }
    }
}

/// The kubelet refreshes a projected token at 80% of its lifetime; one still in use past
/// 90% means the refresh is failing. Warns once per token.
fn warn_if_not_rotated(creds: &Credentials, warned_for: &mut Option<i64>) {
    let times = creds.token_times();
    let Some(expiry) = times.expiry else { return };
    let now = crate::credentials::unix_now();
    if *warned_for != Some(expiry) && times.stale(now) {
        *warned_for = Some(expiry);
        tracing::warn!(
            expires_in_seconds = expiry - now,
            "the token is close to expiry and has not been rotated: is the kubelet refreshing it?"
        );
    }
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(target_os = "linux")]
mod platform {
    use std::path::PathBuf;

    use inotify::{Inotify, WatchMask};
    use tokio::io::unix::AsyncFd;

    /// inotify on the watched directories; every batch of pending events is one wake-up.
    pub(super) struct DirEvents {
        fd: Option<AsyncFd<Inotify>>,
        buf: Vec<u8>,
    }

    impl DirEvents {
        pub(super) fn new(dirs: &[PathBuf]) -> Self {
            let fd = match Self::watch(dirs) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(
                        "cannot watch {dirs:?} with inotify ({e}); falling back to re-reading every {:?}",
                        super::SAFETY_NET
                    );
                    None
                }
            };
            DirEvents {
                fd,
                buf: vec![0; 4096],
            }
        }

        fn watch(dirs: &[PathBuf]) -> std::io::Result<AsyncFd<Inotify>> {
            let inotify = Inotify::init()?;
            let mask = WatchMask::CREATE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::CLOSE_WRITE
                | WatchMask::MODIFY
                | WatchMask::DELETE
                | WatchMask::ATTRIB
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF;
            for dir in dirs {
                inotify.watches().add(dir, mask)?;
            }
            // SAFETY: `Inotify` owns its descriptor, keeps it open for its whole life and
            // always returns the same one from `as_raw_fd`; the `AsyncFd` owns the
            // `Inotify`, so the descriptor outlives the registration.
            unsafe { AsyncFd::register(inotify) }.map_err(|e| e.into_parts().1)
        }

        /// Resolves when one or more events arrived (all pending ones are consumed).
        pub(super) async fn next(&mut self) {
            let Some(fd) = self.fd.as_mut() else {
                return std::future::pending().await;
            };
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return std::future::pending().await;
                };
                let buf = &mut self.buf;
                match guard.try_io(|inner| inner.get_mut().read_events(buf).map(|e| e.count())) {
                    Ok(Ok(n)) if n > 0 => {
                        // Drain whatever else is already queued so a rotation's burst of
                        // events costs one reload.
                        while let Ok(Ok(m)) = guard
                            .try_io(|inner| inner.get_mut().read_events(buf).map(|e| e.count()))
                        {
                            if m == 0 {
                                break;
                            }
                        }
                        return;
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => {
                        tracing::warn!("inotify read failed ({e}); relying on periodic re-reads");
                        self.fd = None;
                        return std::future::pending().await;
                    }
                    Err(_would_block) => continue,
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    use std::path::PathBuf;

    /// No directory events on this platform: the periodic re-read does the work.
    pub struct DirEvents;

    impl DirEvents {
        pub fn new(_dirs: &[PathBuf]) -> Self {
            DirEvents
        }

        pub async fn next(&mut self) {
            std::future::pending().await
        }
    }
}

use platform::DirEvents;
