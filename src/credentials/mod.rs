//! What goes into the upstream `Authorization` header, and keeping it current.
//!
//! The request path calls [`Credentials::header`]: one atomic load and a reference-count
//! increment, no I/O, no lock. Sources that can change (a token file the kubelet
//! rotates) are re-read by the [`crate::reload`] task when their directory changes, and
//! on demand after the API server answers 401 ([`Credentials::refresh_after_unauthorized`]).
//! Only this module ever sees the token's bytes; everything else handles an opaque,
//! sensitive `HeaderValue`.

pub(crate) mod exec;
mod jwt;
mod token_file;

use base64::Engine as _;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::Mutex;

pub(crate) use exec::{ExecError, ExecSpec};
pub(crate) use jwt::TokenTimes;

use crate::tls::Tls;
pub(crate) use token_file::TokenFileError;

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
    /// Counts the credentials held so far (1: the first one; each change adds one), so
    /// that a 401 is explained once per credential, not once per request.
    generation: AtomicU64,
    /// The generation last explained after a 401 (0: none yet).
    hinted: AtomicU64,
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
                    base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
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
            generation: AtomicU64::new(1),
            hinted: AtomicU64::new(0),
        }))
    }

    /// The `Authorization` value for a request about to be sent: the cached value, after
    /// running the exec plugin if its credential is missing or expired.
    pub async fn for_request(&self) -> Result<Option<HeaderValue>, ExecError> {
        if let Some(exec) = &self.exec
            && exec.stale(crate::credentials::unix_now())
        {
            // Boxed: running the plugin is rare; inline, its state would sit in
            // every request's future.
            Box::pin(self.run_exec(None)).await?;
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
            None => !exec.stale(crate::credentials::unix_now()),
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
        // The plugin's first credential is generation 1; each one after it is new.
        if exec.loaded.load(Ordering::Acquire) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
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
                self.generation.fetch_add(1, Ordering::AcqRel);
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

impl Credentials {
    /// Called when the API server answered 401 to a request that carried our credential
    /// (after any retry with a renewed one). Logs, once per credential, what could help:
    /// where it came from, a JWT's `exp` (only that claim is read; the token itself is
    /// never logged) and whether it ever rotated.
    pub fn unauthorized(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.hinted.swap(generation, Ordering::AcqRel) == generation {
            return;
        }
        tracing::warn!(
            "{}",
            self.unauthorized_hint(generation, crate::credentials::unix_now())
        );
    }

    fn unauthorized_hint(&self, generation: u64, now: i64) -> String {
        let expiry = match self.token_times().expiry {
            Some(exp) => {
                let when =
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp.max(0) as u64);
                let rel = if exp <= now {
                    format!("expired {}s ago", now - exp)
                } else {
                    format!("expires in {}s", exp - now)
                };
                format!("; its JWT exp is {} ({rel})", httpdate::fmt_http_date(when))
            }
            None => String::new(),
        };
        let rotated = match &self.source {
            TokenSource::File(_) | TokenSource::Exec(_) if generation > 1 => {
                format!("; renewed {} time(s) since start-up", generation - 1)
            }
            TokenSource::File(_) => "; the file has not changed since start-up".to_owned(),
            TokenSource::Exec(_) => String::new(),
            TokenSource::Static(..) | TokenSource::Basic { .. } | TokenSource::None => {
                "; it is never renewed".to_owned()
            }
        };
        let fix = match &self.source {
            TokenSource::File(_) => {
                "is the service account's token projected and current, and does the API \
                 server trust its issuer?"
            }
            TokenSource::Exec(_) => "does the exec plugin return a credential for this cluster?",
            _ => "is it the credential for this cluster?",
        };
        format!(
            "the API server refused the proxy's credential (401 Unauthorized): {}{expiry}\
             {rotated}; {fix} (said once per credential)",
            self.source.describe()
        )
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

/// Seconds since the Unix epoch: the clock tokens' `iat`/`exp` and exec credentials'
/// `expirationTimestamp` are written in (0 if the clock is before 1970).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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

    #[test]
    fn the_401_hint_names_source_expiry_and_rotation_never_the_token() {
        let dir = std::env::temp_dir().join(format!("ka-hint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        // {"iat":1000,"exp":4600,"sub":"system:serviceaccount:d:x"}
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJpYXQiOjEwMDAsImV4cCI6NDYwMCwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OmQ6eCJ9.c2ln";
        std::fs::write(&path, jwt).unwrap();
        let c = Credentials::load(TokenSource::File(path.clone()), None).unwrap();
        let hint = c.unauthorized_hint(1, 4700);
        assert_eq!(
            hint,
            format!(
                "the API server refused the proxy's credential (401 Unauthorized): file {}; \
                 its JWT exp is Thu, 01 Jan 1970 01:16:40 GMT (expired 100s ago); the file has \
                 not changed since start-up; is the service account's token projected and \
                 current, and does the API server trust its issuer? (said once per credential)",
                path.display()
            )
        );
        assert!(!hint.contains(jwt));
        assert!(
            c.unauthorized_hint(3, 4000)
                .contains("(expires in 600s); renewed 2 time(s)")
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
