//! What goes into the upstream `Authorization` header, and keeping it current.
//!
//! The request path calls [`Credentials::header`]: one atomic load and a reference-count
//! increment, no I/O, no lock. Sources that can change (a token file the kubelet
//! rotates) are re-read by the [`crate::reload`] task when their directory changes, and
//! on demand after the API server answers 401 ([`Credentials::refresh_after_unauthorized`]).
//! Only this module ever sees the token's bytes; everything else handles an opaque,
//! sensitive `HeaderValue`.

pub mod exec;
mod jwt;
mod token_file;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::Mutex;

pub use exec::{ExecError, ExecSpec};
pub use jwt::TokenTimes;

use crate::tls::Tls;
pub use token_file::TokenFileError;

/// A secret string: its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
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
    /// A fixed token, read once and never refreshed; the second field names where it
    /// came from (`--token`, or the kubeconfig's `token`) for the start-up log.
    Static(Secret, &'static str),
    /// A file re-read whenever it changes (service-account token, kubeconfig `tokenFile`).
    File(PathBuf),
    /// HTTP Basic authentication (kubeconfig `username`/`password`).
    Basic { username: String, password: Secret },
    /// An exec credential plugin, run when needed and cached until expiry.
    Exec(Box<ExecSpec>),
}

impl TokenSource {
    /// A description safe for logs.
    pub fn describe(&self) -> String {
        match self {
            TokenSource::None => "none".to_owned(),
            TokenSource::Static(_, from) => format!("{from} (static)"),
            TokenSource::File(p) => format!("file {}", p.display()),
            TokenSource::Basic { username, .. } => format!("basic auth as {username:?}"),
            TokenSource::Exec(spec) => format!("exec plugin {:?}", spec.command),
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
    #[error("the basic-auth username or password is not a valid HTTP header value")]
    InvalidBasic,
}

/// The current credentials.
pub struct Credentials {
    source: TokenSource,
    current: ArcSwapOption<HeaderValue>,
    /// Serialises re-reads after a 401 and plugin runs, so a burst of requests reads the
    /// file, or runs the plugin, once.
    refresh: Mutex<()>,
    exec: Option<ExecState>,
}

/// An exec plugin's cached result.
struct ExecState {
    loaded: AtomicBool,
    /// Unix seconds after which the credential must be renewed.
    expiry: AtomicI64,
    /// Where a client certificate from the plugin goes.
    tls: Option<Arc<Tls>>,
}

/// Renew an exec credential this long before it expires, so no request carries one
/// that expires in flight.
const EXEC_EXPIRY_MARGIN: i64 = 10;

impl ExecState {
    fn stale(&self, now: i64) -> bool {
        !self.loaded.load(Ordering::Acquire)
            || now
                >= self
                    .expiry
                    .load(Ordering::Acquire)
                    .saturating_sub(EXEC_EXPIRY_MARGIN)
    }
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
    /// Loads the source once; a file that cannot be read at start-up is an error. An
    /// exec plugin runs at the first request (as in client-go); a client certificate it
    /// returns goes to `tls`.
    pub fn load(source: TokenSource, tls: Option<Arc<Tls>>) -> Result<Arc<Self>, CredentialsError> {
        let initial = match &source {
            TokenSource::None | TokenSource::Exec(_) => None,
            TokenSource::Static(s, _) => {
                Some(bearer(s.expose()).ok_or(CredentialsError::InvalidStaticToken)?)
            }
            TokenSource::File(p) => Some(token_file::read(p)?),
            TokenSource::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
                let mut v = HeaderValue::try_from(format!(
                    "Basic {}",
                    crate::base64::encode(raw.as_bytes())
                ))
                .map_err(|_| CredentialsError::InvalidBasic)?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let exec = matches!(source, TokenSource::Exec(_)).then(|| ExecState {
            loaded: AtomicBool::new(false),
            expiry: AtomicI64::new(i64::MAX),
            tls,
        });
        Ok(Arc::new(Credentials {
            source,
            current: ArcSwapOption::new(initial.map(Arc::new)),
            refresh: Mutex::new(()),
            exec,
        }))
    }

    /// The `Authorization` value for a request about to be sent: the cached value, after
    /// running the exec plugin if its credential is missing or expired.
    pub async fn for_request(&self) -> Result<Option<HeaderValue>, ExecError> {
        if let Some(exec) = &self.exec {
            if exec.stale(crate::metrics::unix_now()) {
                // Boxed: running the plugin is rare; inline, its state would sit in
                // every request's future.
                Box::pin(self.run_exec(None)).await?;
            }
        }
        Ok(self.header())
    }

    /// Runs the plugin unless another caller already renewed the credential while this
    /// one waited (`refused`: the value the API server just refused).
    async fn run_exec(&self, refused: Option<&HeaderValue>) -> Result<(), ExecError> {
        let (Some(exec), TokenSource::Exec(spec)) = (&self.exec, &self.source) else {
            return Ok(());
        };
        let _one_at_a_time = self.refresh.lock().await;
        let renewed = match refused {
            None => !exec.stale(crate::metrics::unix_now()),
            Some(r) => self.header().as_ref() != Some(r),
        };
        if renewed {
            return Ok(());
        }
        let out = spec.run().await?;
        if let (Some((cert, key)), Some(tls)) = (&out.client_cert, &exec.tls) {
            tls.set_client_identity(cert, key)
                .map_err(|e| ExecError::Invalid {
                    command: spec.command.clone(),
                    reason: e.to_string(),
                })?;
        }
        let header = match &out.token {
            Some(t) => Some(bearer(t.expose()).ok_or_else(|| ExecError::Invalid {
                command: spec.command.clone(),
                reason: "the token is not a valid HTTP header value".to_owned(),
            })?),
            None => None,
        };
        self.current.store(header.map(Arc::new));
        exec.expiry
            .store(out.expiry.unwrap_or(i64::MAX), Ordering::Release);
        exec.loaded.store(true, Ordering::Release);
        tracing::info!(
            command = %spec.command,
            token = out.token.is_some(),
            client_certificate = out.client_cert.is_some(),
            expires = ?out.expiry,
            "exec plugin returned credentials"
        );
        Ok(())
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

    /// Whether a refused credential may have a successor worth a retry.
    pub fn can_change(&self) -> bool {
        matches!(self.source, TokenSource::File(_) | TokenSource::Exec(_))
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
        if self.exec.is_some() {
            // client-go renews an exec credential after a 401.
            if let Err(e) = self.run_exec(Some(sent)).await {
                tracing::warn!("{e}");
            }
            return self.header().filter(|h| h != sent);
        }
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
        let c = Credentials::load(TokenSource::Static(s, "--token"), None).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let h = c.header().unwrap();
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("hunter2"));
        assert_eq!(h.as_bytes(), b"Bearer hunter2");
    }

    #[test]
    fn basic_auth_header() {
        let c = Credentials::load(
            TokenSource::Basic {
                username: "admin".into(),
                password: Secret::new("pw"),
            },
            None,
        )
        .unwrap();
        let h = c.header().unwrap();
        assert_eq!(h.as_bytes(), b"Basic YWRtaW46cHc=");
        assert!(h.is_sensitive());
        assert!(!format!("{c:?}").contains("pw\""));
    }

    #[test]
    fn a_token_with_a_newline_is_refused() {
        let err = Credentials::load(TokenSource::Static(Secret::new("a\nb"), "--token"), None)
            .unwrap_err();
        assert!(!err.to_string().contains("a\nb"));
    }

    #[tokio::test]
    async fn file_token_is_reloaded_and_last_good_kept() {
        let dir = std::env::temp_dir().join(format!("ka-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "one\n").unwrap();
        let c = Credentials::load(TokenSource::File(path.clone()), None).unwrap();
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
