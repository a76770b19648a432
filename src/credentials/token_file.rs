//! Reading a bearer-token file (service-account token, kubeconfig `tokenFile`).
//!
//! client-go and kube-rs trim surrounding white space and treat an empty file as an
//! error; a failed read keeps the previous token (kube-rs cites kubernetes#68164: the
//! kubelet's atomic writer can briefly leave the link dangling).

use std::path::{Path, PathBuf};

use http::HeaderValue;

/// A token file could not be used. The token itself never appears here.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} is empty")]
    Empty { path: PathBuf },
    #[error("token file {path} holds characters not allowed in an HTTP header")]
    Invalid { path: PathBuf },
}

/// Reads the file and returns the sensitive `Bearer …` header value.
pub(super) fn read(path: &Path) -> Result<HeaderValue, TokenFileError> {
    let raw = std::fs::read(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = raw.trim_ascii();
    if token.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_owned(),
        });
    }
    let mut value = Vec::with_capacity(token.len() + 7);
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(token);
    let mut header = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).map_err(|_| {
        TokenFileError::Invalid {
            path: path.to_owned(),
        }
    })?;
    header.set_sensitive(true);
    Ok(header)
}
