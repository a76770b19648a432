//! kube-ambassador's behaviour tests, compiled into one test binary: each module below
//! was a `tests/*.rs` binary of its own, and each of those compiled and linked `support`
//! (and the fake API server) again; one binary builds and links them once.
//!
//! Test names keep their module as a prefix, so a filter still selects one file's tests:
//! `cargo test go_upstream`, `cargo test --test it watch_resume::`.
//!
//! What sharing one process means here: the proxy under test is always a child process
//! (`CARGO_BIN_EXE_kube-ambassador`), and no test sets environment variables or the
//! working directory of this one. The process-wide things the tests do touch are safe to
//! share: `hardening` raises the open-files limit (never lowers it), and
//! `support::free_port_from` hands out ports from one counter (each module still asks
//! from its own range, as when they were separate processes).

mod support;

mod admin;
mod clients;
mod compat;
mod errors;
mod exec_plugin;
mod fake_api;
mod faults;
mod filter;
mod forwarding;
mod go_upstream;
mod hardening;
mod hedge;
mod http2;
mod inject;
mod k8s_aware;
mod kubeconfig;
mod local;
mod logs;
mod mtls;
mod rotation;
mod shutdown;
mod startup;
mod streaming;
mod upgrades;
mod upstream_h1;
mod upstream_h2;
mod upstream_proxy;
mod watch_resume;
