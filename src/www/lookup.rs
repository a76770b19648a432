//! Finding what a static-file path names, without ever leaving the `--www` directory:
//! the path made relative, opened, proved to lie beneath the root (real paths, same
//! device and inode), and a directory's index or listing found.

use std::fs::{self, File, Metadata};
use std::io::{self};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use http::{Response, StatusCode};

use crate::proxy::body::ProxyBody;
use crate::proxy::status;

/// The page a directory serves, and the name redirected to `./`.
pub(super) const INDEX: &str = "index.html";

/// Why a file was not served. Each carries the path that failed; the client only sees
/// the status (the path is for the debug log).
#[derive(Debug, thiserror::Error)]
pub(super) enum ServeError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: resolves outside the --www directory {}", path.display(), root.display())]
    Outside { path: PathBuf, root: PathBuf },
    #[error("{}: changed while it was being opened", path.display())]
    Changed { path: PathBuf },
    #[error("{}: neither a regular file nor a directory", path.display())]
    Special { path: PathBuf },
}

impl ServeError {
    pub(super) fn io(path: &Path) -> impl FnOnce(io::Error) -> ServeError + '_ {
        move |source| ServeError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Go's `toHTTPError`: missing is 404, forbidden 403, anything else 500. What we
    /// refuse on purpose looks missing, so it reveals nothing.
    pub(super) fn response(&self) -> Response<ProxyBody> {
        match self {
            ServeError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                status::text(StatusCode::FORBIDDEN, "403 Forbidden\n")
            }
            ServeError::Io { source, .. } if !is_missing(source) => {
                tracing::warn!("static file: {self}");
                status::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "500 Internal Server Error\n",
                )
            }
            _ => status::not_found(),
        }
    }
}

/// Errors Go's `http.Dir` reports as "does not exist" (`mapOpenError` turns a file used
/// as a directory into that too).
pub(super) fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    ) || matches!(e.raw_os_error(), Some(libc::ENAMETOOLONG | libc::ELOOP))
}

/// What a path turned out to be.
pub(super) enum Found {
    /// A directory named without its trailing slash.
    AddSlash,
    /// A file named with a trailing slash.
    DropSlash,
    File {
        file: File,
        meta: Metadata,
        /// The directory's `index.html`, served for the directory.
        index: bool,
    },
    Listing {
        modified: Option<SystemTime>,
        entries: Vec<(String, bool)>,
    },
}

/// The path below the root, from the decoded URL path: empty and `.` segments dropped
/// (Go's `path.Clean`), `None` for a `..` segment or a NUL byte. Go would clamp `..` at
/// the root; such a path only arrives percent-encoded (the router 301s a literal one),
/// so we refuse it rather than guess what was meant.
pub(super) fn relative(upath: &str) -> Option<PathBuf> {
    if upath.contains('\0') {
        return None;
    }
    let mut rel = PathBuf::new();
    for seg in upath.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s => rel.push(s),
        }
    }
    Some(rel)
}

/// The blocking part: resolve, open, check, and for a directory find its index or list it.
pub(super) fn lookup(root: &Path, rel: &Path, slash: bool) -> Result<Found, ServeError> {
    // Resolved per request: the directory may be a symlink that is swapped (a ConfigMap
    // volume's `..data`), or appear after start-up.
    let root = fs::canonicalize(root).map_err(ServeError::io(root))?;
    let (file, meta, real) = open_beneath(&root, rel)?;
    if meta.is_file() {
        return Ok(if slash {
            Found::DropSlash
        } else {
            Found::File {
                file,
                meta,
                index: false,
            }
        });
    }
    if !slash {
        return Ok(Found::AddSlash);
    }
    // Go falls back to the listing whatever kept the index from being opened.
    if let Ok((file, meta, _)) = open_beneath(&root, &rel.join(INDEX))
        && meta.is_file()
    {
        return Ok(Found::File {
            file,
            meta,
            index: true,
        });
    }
    let mut entries = Vec::new();
    for entry in fs::read_dir(&real).map_err(ServeError::io(&real))? {
        let entry = entry.map_err(ServeError::io(&real))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        entries.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
    }
    // The listing was read by path: make sure that path still is the directory we
    // checked, so a swapped symlink cannot list a directory elsewhere.
    same_file(&real, &meta)?;
    entries.sort();
    Ok(Found::Listing {
        modified: meta.modified().ok(),
        entries,
    })
}

/// Opens `root/rel` and proves that what was opened lies inside `root` (both real
/// paths): the real path must be below `root`, and still name the very file opened.
/// Returns the file, its metadata and its real path.
pub(super) fn open_beneath(
    root: &Path,
    rel: &Path,
) -> Result<(File, Metadata, PathBuf), ServeError> {
    let full = root.join(rel);
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It has
    // no effect on reading a regular file.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&full)
        .map_err(ServeError::io(&full))?;
    let meta = file.metadata().map_err(ServeError::io(&full))?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(ServeError::Special { path: full });
    }
    let real = fs::canonicalize(&full).map_err(ServeError::io(&full))?;
    if !real.starts_with(root) {
        return Err(ServeError::Outside {
            path: full,
            root: root.to_owned(),
        });
    }
    same_file(&real, &meta)?;
    Ok((file, meta, real))
}

/// Fails unless `path` (symlink-free) names the file `meta` was taken from.
pub(super) fn same_file(path: &Path, meta: &Metadata) -> Result<(), ServeError> {
    let now = fs::metadata(path).map_err(ServeError::io(path))?;
    if now.dev() == meta.dev() && now.ino() == meta.ino() {
        Ok(())
    } else {
        Err(ServeError::Changed {
            path: path.to_owned(),
        })
    }
}
