//! What goes into the upstream `Authorization` header, and keeping it current.
//!
//! The request path calls [`Credentials::header`]: one atomic load and a reference-count
//! increment, no I/O, no lock. Sources that can change (a token file the kubelet
//! rotates) are re-read by the [`crate::reload`] task when their directory changes, and
//! on demand after the API server answers 401 ([`Credentials::refresh_after_unauthorized`]).
//! Only this module ever sees the token's bytes; everything else handles an opaque,
//! sensitive `HeaderValue`.

mod jwt;
mod token_file;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::Mutex;

pub use jwt::TokenTimes;
pub use token_file::TokenFileError;

/// A secret string: its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Where the bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// No credentials are added (plain `http://` upstream, or none configured).
    None,
    /// A fixed token (`--token`): read once, never refreshed.
    Static(Secret),
    /// A file re-read whenever it changes (service-account token, kubeconfig `tokenFile`).
    File(PathBuf),
}

impl TokenSource {
    /// A description safe for logs.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::None => "none".to_owned(),
            TokenSource::Static(_) => "--token (static)".to_owned(),
            TokenSource::File(p) => format!("file {}", p.display()),
        }
    }
}

/// Errors loading credentials at start-up.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    #[error("the token given with --token is not a valid HTTP header value")]
    InvalidStaticToken,
}

/// The current credentials.
pub struct Credentials {
    source: TokenSource,
    current: ArcSwapOption<HeaderValue>,
    /// Serialises re-reads after a 401 so a burst of them reads the file once.
    refresh: Mutex<()>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Changed,
    /// The read failed or was empty: the last good token is kept.
    Failed,
}

impl Credentials {
    /// Loads the source once; a file that cannot be read at start-up is an error.
    pub fn load(source: TokenSource) -> Result<Arc<Self>, CredentialsError> {
        let initial = match &source {
            TokenSource::None => None,
            TokenSource::Static(s) => {
                Some(bearer(s.expose()).ok_or(CredentialsError::InvalidStaticToken)?)
            }
            TokenSource::File(p) => Some(token_file::read(p)?),
        };
        Ok(Arc::new(Credentials {
            source,
            current: ArcSwapOption::new(initial.map(Arc::new)),
            refresh: Mutex::new(()),
        }))
    }

    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// The file to watch, if the token can change.
    pub fn watched_file(&self) -> Option<&Path> {
        match &self.source {
            TokenSource::File(p) => Some(p),
            _ => None,
        }
    }

    /// The `Authorization` value for the next request. No I/O, no lock.
    pub fn header(&self) -> Option<HeaderValue> {
        self.current.load().as_deref().cloned()
    }

    /// The current token's validity window, if it is a JWT.
    pub fn token_times(&self) -> TokenTimes {
        match self.current.load().as_deref() {
            Some(h) => jwt::times(h.as_bytes().strip_prefix(b"Bearer ").unwrap_or_default()),
            None => TokenTimes::default(),
        }
    }

    /// Re-reads a file source; keeps the last good token when the read fails. Blocking
    /// file I/O: call from a blocking context.
    pub fn reload_blocking(&self) -> Reload {
        let TokenSource::File(path) = &self.source else {
            return Reload::Unchanged;
        };
        match token_file::read(path) {
            Ok(new) => {
                let old = self.current.load();
                if old.as_deref() == Some(&new) {
                    return Reload::Unchanged;
                }
                self.current.store(Some(Arc::new(new)));
                tracing::info!(path = %path.display(), "token changed on disk; using the new one");
                Reload::Changed
            }
            Err(e) => {
                tracing::warn!("{e}; keeping the last good token");
                Reload::Failed
            }
        }
    }

    /// Called after the API server refused `sent` with 401. Returns a different token
    /// to retry with, if there is one (already picked up, or found by re-reading now).
    pub async fn refresh_after_unauthorized(
        self: &Arc<Self>,
        sent: &HeaderValue,
    ) -> Option<HeaderValue> {
        let current = self.header()?;
        if current != *sent {
            return Some(current);
        }
        self.watched_file()?;
        let _one_at_a_time = self.refresh.lock().await;
        let me = Arc::clone(self);
        // Another waiter may have re-read already; reading again is cheap and simpler.
        let _ = tokio::task::spawn_blocking(move || me.reload_blocking()).await;
        let current = self.header()?;
        (current != *sent).then_some(current)
    }
}

/// `Bearer <token>` as a sensitive header value (hyper then never logs it, and HPACK
/// never indexes it).
fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v =
        HeaderValue::from_maybe_shared(bytes::Bytes::from(format!("Bearer {token}"))).ok()?;
    v.set_sensitive(true);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let c = Credentials::load(TokenSource::Static(s)).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let h = c.header().unwrap();
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("hunter2"));
        assert_eq!(h.as_bytes(), b"Bearer hunter2");
    }

    #[test]
    fn a_token_with_a_newline_is_refused() {
        let err = Credentials::load(TokenSource::Static(Secret::new("a\nb"))).unwrap_err();
        assert!(!err.to_string().contains("a\nb"));
    }

    #[tokio::test]
    async fn file_token_is_reloaded_and_last_good_kept() {
        let dir = std::env::temp_dir().join(format!("ka-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "one\n").unwrap();
        let c = Credentials::load(TokenSource::File(path.clone())).unwrap();
        assert_eq!(c.header().unwrap().as_bytes(), b"Bearer one");
        assert_eq!(c.reload_blocking(), Reload::Unchanged);

        std::fs::write(&path, "two").unwrap();
        assert_eq!(c.reload_blocking(), Reload::Changed);
        assert_eq!(c.header().unwrap().as_bytes(), b"Bearer two");

        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(c.reload_blocking(), Reload::Failed);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.reload_blocking(), Reload::Failed);
        assert_eq!(c.header().unwrap().as_bytes(), b"Bearer two");

        std::fs::write(&path, "three").unwrap();
        let sent = bearer("two").unwrap();
        let next = c.refresh_after_unauthorized(&sent).await.unwrap();
        assert_eq!(next.as_bytes(), b"Bearer three");
        assert!(c.refresh_after_unauthorized(&next).await.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
