//! Kubernetes-aware judgement of each request: what it is (`attributes`: verb + resource,
//! as the API server's RequestInfoFactory sees it), and what the `gate` does with that —
//! a local RBAC policy (`policy`), a recorded least-privilege Role (`record`), a request
//! budget (`budget`) — with the names interned for the metrics (`intern`).

pub mod attributes;
pub(crate) mod budget;
pub(crate) mod gate;
pub(crate) mod intern;
pub mod policy;
pub(crate) mod record;
mod selector;
