//! Binding: a TCP address (kubectl's `--address`/`--port` rules and its error texts) or
//! a private unix socket (`--unix-socket`, a stale socket replaced, nothing else ever),
//! accepting from either, and the open-files limit raised for many clients.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};

/// How long a probe of an existing socket may take before it counts as alive (a full
/// accept backlog makes a connect wait).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Binding failed; the message starts as kubectl's (`listen tcp ADDR: bind: …`,
/// `listen unix PATH: bind: …`), then says why where kubectl does not.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("listen tcp {addr}: bind: {reason}")]
    Bind { addr: String, reason: String },
    #[error("listen unix {}: bind: {reason}", path.display())]
    BindUnix { path: PathBuf, reason: String },
    #[error("invalid --address {0:?}: not an IP address or a resolvable host name")]
    Address(String),
}

/// Where the proxy accepts connections.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixSocket),
}

/// A bound unix socket; its file is removed when this is dropped (the accept loop has
/// ended), unless something else has taken the path since.
pub(crate) struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we created, to recognise it at removal.
    id: (u64, u64),
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.id);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("cannot remove the socket {}: {e}", self.path.display());
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl Listener {
    /// What the start-up line names: `127.0.0.1:8001`, `[::1]:8001`, or the socket path
    /// (kubectl prints Go's `Addr().String()`, which is the path for a unix socket).
    pub(crate) fn local(&self) -> Result<String, ListenError> {
        match self {
            Listener::Tcp(l) => {
                l.local_addr()
                    .map(|a| a.to_string())
                    .map_err(|e| ListenError::Bind {
                        addr: "local address".to_owned(),
                        reason: go_errno_text(&e),
                    })
            }
            Listener::Unix(u) => Ok(u.path.display().to_string()),
        }
    }
}

/// Resolves `--address` (`127.0.0.1`, `::1`, `[::1]`, `localhost`) and binds.
pub(crate) async fn bind(address: &str, port: u16) -> Result<TcpListener, ListenError> {
    let addr = socket_addr(address, port).await?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| ListenError::Bind {
            addr: addr.to_string(),
            reason: go_errno_text(&e),
        })
}

/// `--address` and `--port` as the socket address to bind (a name is looked up), checked
/// at start-up before the upstream is resolved, so a bad flag is reported first.
pub(crate) async fn socket_addr(address: &str, port: u16) -> Result<SocketAddr, ListenError> {
    let host = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    let addr = match host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| ListenError::Address(address.to_owned()))?,
    };
    Ok(addr)
}

/// Binds a unix socket at `path`, readable and writable by our user only (mode 0700, as
/// kubectl: umask 0077 while binding).
///
/// kubectl removes any socket found at the path, even one another process still serves;
/// we remove only a stale one (nobody accepts on it) and refuse a live one, so a second
/// proxy cannot silently steal the first one's clients. Anything that is not a socket is
/// never touched.
pub(crate) async fn bind_unix(path: &Path) -> Result<Listener, ListenError> {
    let fail = |reason: String| ListenError::BindUnix {
        path: path.to_owned(),
        reason,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
                Ok(Err(_)) => {
                    tracing::info!("removing the stale socket {}", path.display());
                    // If this fails, bind says why.
                    let _ = std::fs::remove_file(path);
                }
                Ok(Ok(_)) | Err(_) => {
                    return Err(fail(
                        "address already in use (another process is serving on this socket)"
                            .to_owned(),
                    ));
                }
            }
        }
        Ok(m) => {
            return Err(fail(format!(
                "address already in use ({} is at this path, not a socket; only a stale \
                 socket is replaced)",
                kind_of(&m)
            )));
        }
        Err(_) => {}
    }
    // The bind itself creates the socket owner-only (a chmod after it would leave a
    // moment where anyone could connect). The mask is process-wide: other threads creating
    // files meanwhile only get stricter permissions, and no other code here sets it.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(|e| fail(go_errno_text(&e)))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail(e.to_string()))?;
    Ok(Listener::Unix(UnixSocket {
        listener,
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    }))
}

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Go spells socket errors in lower case without the errno; scripts grep for it.
fn go_errno_text(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        AddrInUse => "address already in use".to_owned(),
        AddrNotAvailable => "cannot assign requested address".to_owned(),
        PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

/// One accepted connection.
pub(crate) enum Accepted {
    Tcp(tokio::net::TcpStream, IpAddr),
    Unix(UnixStream),
}

impl Listener {
    pub(super) async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => {
                let (stream, remote) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Accepted::Tcp(stream, remote.ip()))
            }
            Listener::Unix(u) => Ok(Accepted::Unix(u.listener.accept().await?.0)),
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime does for
/// kubectl since Go 1.19: each watch holds two descriptors (client and upstream), and the
/// common soft default of 1024 would cap a sidecar at about 500 watches. Returns the
/// limit now in force.
pub(crate) fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // `None` is RLIM_INFINITY.
    let lim = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    let now = if lim.current != lim.maximum && setrlimit(Resource::Nofile, raised).is_ok() {
        raised
    } else {
        lim
    };
    Some(now.current.unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[tokio::test]
    async fn a_unix_socket_is_private_replaces_only_a_stale_socket_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let first = bind_unix(&path).await.unwrap();
        assert_eq!(first.local().unwrap(), path.display().to_string());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");

        // Alive: refused, and the file is left alone.
        let err = bind_unix(&path).await.err().unwrap().to_string();
        assert!(
            err.starts_with(&format!(
                "listen unix {}: bind: address already in use",
                path.display()
            )),
            "{err}"
        );
        assert!(err.contains("another process"), "{err}");

        // Stale (nobody accepts): replaced. A std listener leaves its file behind.
        drop(first);
        assert!(!path.exists(), "the socket file is removed on drop");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let second = bind_unix(&path).await.unwrap();
        drop(second);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn anything_but_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind_unix(&file).await.err().unwrap().to_string();
        assert!(
            err.contains("address already in use") && err.contains("a regular file"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        let err = bind_unix(dir.path()).await.err().unwrap().to_string();
        assert!(err.contains("a directory"), "{err}");
        let missing = dir.path().join("no/such/dir/s.sock");
        let err = bind_unix(&missing).await.err().unwrap().to_string();
        assert!(err.starts_with("listen unix "), "{err}");
    }

    #[test]
    fn removal_spares_a_file_that_replaced_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(bind_unix(&path)).unwrap();
        std::fs::remove_file(&path).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        rt.block_on(async move { drop(listener) });
        assert!(path.exists(), "someone else's socket was removed");
    }
}
