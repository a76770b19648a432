//! `kube-ambassador inject`: its subcommand and flags.

use std::path::PathBuf;

use super::DEFAULT_PORT;

/// What else the binary does.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// Add kube-ambassador to every pod template of some manifests (Pod, Deployment,
    /// StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, ReplicationController, and the
    /// items of a List), and write them to stdout; other objects pass through unchanged.
    #[command(after_help = "Examples:
  # Add the native sidecar (Kubernetes >= 1.29) and apply
  kube-ambassador inject -f deployment.yaml | kubectl apply -f -

  # The sidecar alone holds the service-account token
  kubectl get deploy web -o yaml | kube-ambassador inject --isolate-token | kubectl apply -f -

  # Take it out again
  kube-ambassador inject --uninject -f deployment.yaml")]
    Inject(InjectArgs),
}

/// `kube-ambassador inject`'s flags.
#[derive(clap::Args, Clone, Debug)]
pub struct InjectArgs {
    /// The manifests to read (YAML, several documents, or JSON); `-` is stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-"
    )]
    pub file: PathBuf,

    /// The sidecar's image.
    #[arg(long, default_value = concat!("kube-ambassador:", env!("CARGO_PKG_VERSION")))]
    pub image: String,

    /// Add a regular container instead of the native sidecar (an init container with
    /// `restartPolicy: Always`), for clusters older than Kubernetes 1.29.
    #[arg(long)]
    pub classic: bool,

    /// Set `automountServiceAccountToken: false` on the pod and mount a projected
    /// service-account token, `ca.crt` and namespace into the sidecar alone, so the app
    /// never holds the token.
    #[arg(long)]
    pub isolate_token: bool,

    /// The environment variable that tells app containers the proxy's URL.
    #[arg(long, value_name = "NAME", default_value = "KUBERNETES_PROXY_URL")]
    pub env: String,

    /// The port the sidecar serves the API on (on 127.0.0.1).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_PORT)]
    pub proxy_port: u16,

    /// The port of the sidecar's /healthz, /readyz and /metrics (the probes use it).
    #[arg(long, value_name = "PORT", default_value_t = 8002)]
    pub admin_port: u16,

    /// Remove what inject added instead.
    #[arg(long)]
    pub uninject: bool,
}
