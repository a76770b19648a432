//! The process environment that configuration reads: the in-cluster environment: `KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted
//! service-account directory, as client-go's `InClusterConfig` reads them.

/// Where the kubelet mounts the service account.
pub(crate) const DEFAULT_SERVICE_ACCOUNT_DIR: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount";

/// The environment variables that matter, captured once (tests build their own).
#[derive(Debug, Clone, Default)]
pub(crate) struct Environment {
    pub service_host: Option<String>,
    pub service_port: Option<String>,
    /// `KUBECONFIG`: a list of files.
    pub kubeconfig: Option<std::ffi::OsString>,
    /// The home directory, for `~/.kube/config`.
    pub home: Option<std::path::PathBuf>,
}

impl Environment {
    pub(crate) fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Environment {
            service_host: get("KUBERNETES_SERVICE_HOST"),
            service_port: get("KUBERNETES_SERVICE_PORT"),
            kubeconfig: std::env::var_os("KUBECONFIG"),
            home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(std::path::PathBuf::from),
        }
    }

    /// The in-cluster server URL (IPv6 host bracketed), `None` outside a pod.
    pub(crate) fn in_cluster(&self) -> Result<Option<String>, super::ConfigError> {
        match (&self.service_host, &self.service_port) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(super::ConfigError::PartialEnvironment {
                missing: "KUBERNETES_SERVICE_PORT",
                present: "KUBERNETES_SERVICE_HOST",
            }),
            (None, Some(_)) => Err(super::ConfigError::PartialEnvironment {
                missing: "KUBERNETES_SERVICE_HOST",
                present: "KUBERNETES_SERVICE_PORT",
            }),
            (Some(host), Some(port)) => {
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                Ok(Some(format!("https://{host}:{port}")))
            }
        }
    }
}
