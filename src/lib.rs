//! kube-ambassador: an ambassador sidecar for the Kubernetes API, and a drop-in
//! replacement for `kubectl proxy`.
//!
//! The folders follow a request's path (see the README's architecture section):
//! `server` accepts it, `proxy` routes, filters and forwards it (`access` judges it as
//! verb + resource, `watch` resumes a watch the API server ended), `upstream` carries it
//! to the API server over HTTP/1.1 or HTTP/2. `config`, `credentials`, `tls` and `reload`
//! say where the API server is and keep its credentials current; `app` wires it all.
//!
//! Only what the binary, the fuzz targets and the tests use is public; the lint below
//! keeps everything else `pub(crate)`.

#![warn(unreachable_pub)]

pub mod access;
mod app;
pub mod cli;
mod config;
mod credentials;
pub mod inject;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod proxy;
mod reload;
mod server;
mod shutdown;
mod tls;
mod upstream;
mod watch;
mod www;

pub use app::{RunError, run};
