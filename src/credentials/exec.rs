//! Exec credential plugins (`client.authentication.k8s.io/v1` and `v1beta1`), as
//! client-go runs them: the command with its args and env plus `KUBERNETES_EXEC_INFO`,
//! stdin closed (a proxy has no terminal), the `ExecCredential` on stdout read for a
//! token and/or a client certificate, cached until `expirationTimestamp`.
//!
//! Differences from client-go, for a long-running proxy: a plugin that does not finish
//! within the timeout is killed and the request fails with a clear error instead of
//! hanging; `interactiveMode: Always` is refused at start-up.

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use super::Secret;

/// A resolved `exec` section of a kubeconfig user. Its `Debug` leaves out the values of
/// the plugin's environment, which often hold secrets (cloud credentials).
#[derive(Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub api_version: String,
    pub install_hint: Option<String>,
    /// The `spec.cluster` object when the plugin asked for it (`provideClusterInfo`).
    pub cluster: Option<serde_json::Value>,
    pub timeout: Duration,
}

impl std::fmt::Debug for ExecSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ExecSpec")
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env_names", &env)
            .field("api_version", &self.api_version)
            .field("provide_cluster_info", &self.cluster.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a successful run returned.
pub struct ExecOutput {
    pub token: Option<Secret>,
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    /// Unix seconds; `None`: valid until the API server refuses it.
    pub expiry: Option<i64>,
}

/// A plugin run that failed. Shows the plugin's stderr and install hint, never its
/// stdout (which may hold a credential).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("exec plugin {command:?} could not be started: {source}{hint}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
        hint: Hint,
    },
    #[error("exec plugin {command:?} did not finish within {timeout:?}; it was stopped")]
    Timeout { command: String, timeout: Duration },
    #[error("exec plugin {command:?} failed with {status}: {stderr}{hint}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
        hint: Hint,
    },
    #[error("exec plugin {command:?} returned an invalid ExecCredential: {reason}")]
    Invalid { command: String, reason: String },
}

/// The kubeconfig's `installHint`, shown after a failure to start or run.
#[derive(Debug, Default)]
pub struct Hint(Option<String>);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(h) => write!(f, "\n{h}"),
            None => Ok(()),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecCredential {
    api_version: Option<String>,
    kind: Option<String>,
    status: Option<Status>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    token: Option<Secret>,
    client_certificate_data: Option<String>,
    client_key_data: Option<Secret>,
    expiration_timestamp: Option<String>,
}

impl ExecSpec {
    /// Runs the plugin once.
    pub async fn run(&self) -> Result<ExecOutput, ExecError> {
        let hint = || Hint(self.install_hint.clone());
        let mut info = serde_json::json!({
            "apiVersion": self.api_version,
            "kind": "ExecCredential",
            "spec": {"interactive": false},
        });
        if let Some(cluster) = &self.cluster {
            info["spec"]["cluster"] = cluster.clone();
        }
        let mut child = tokio::process::Command::new(&self.command)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("KUBERNETES_EXEC_INFO", info.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ExecError::Spawn {
                command: self.command.clone(),
                source,
                hint: hint(),
            })?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let run = async {
            let read_out = async {
                if let Some(s) = stdout.as_mut() {
                    let _ = s.read_to_end(&mut out).await;
                }
            };
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.read_to_end(&mut err).await;
                }
            };
            let ((), (), status) = tokio::join!(read_out, read_err, child.wait());
            status
        };
        let status = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(status)) => status,
            Ok(Err(source)) => {
                return Err(ExecError::Spawn {
                    command: self.command.clone(),
                    source,
                    hint: hint(),
                });
            }
            // Dropping the child kills it (kill_on_drop).
            Err(_) => {
                return Err(ExecError::Timeout {
                    command: self.command.clone(),
                    timeout: self.timeout,
                });
            }
        };
        if !status.success() {
            return Err(ExecError::Failed {
                command: self.command.clone(),
                status,
                stderr: String::from_utf8_lossy(&err).trim().to_owned(),
                hint: hint(),
            });
        }
        self.parse(&out)
    }

    fn parse(&self, out: &[u8]) -> Result<ExecOutput, ExecError> {
        let invalid = |reason: String| ExecError::Invalid {
            command: self.command.clone(),
            reason,
        };
        // serde_json's message names a position, not the content: safe to show.
        let cred: ExecCredential =
            serde_json::from_slice(out).map_err(|e| invalid(format!("not JSON ({e})")))?;
        if cred.kind.as_deref() != Some("ExecCredential") {
            return Err(invalid("kind is not ExecCredential".to_owned()));
        }
        if cred.api_version.as_deref() != Some(self.api_version.as_str()) {
            return Err(invalid(format!(
                "apiVersion {:?} does not match the kubeconfig's {:?}",
                cred.api_version.unwrap_or_default(),
                self.api_version
            )));
        }
        let status = cred.status.ok_or_else(|| invalid("no status".to_owned()))?;
        let client_cert = match (status.client_certificate_data, status.client_key_data) {
            (Some(cert), Some(key)) => Some((cert.into_bytes(), key.expose().as_bytes().to_vec())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "clientCertificateData and clientKeyData must come together".to_owned(),
                ));
            }
        };
        let token = status.token.filter(|t| !t.expose().is_empty());
        if token.is_none() && client_cert.is_none() {
            return Err(invalid(
                "neither a token nor a client certificate".to_owned(),
            ));
        }
        let expiry = match status.expiration_timestamp {
            Some(ts) => Some(
                parse_rfc3339(&ts)
                    .ok_or_else(|| invalid(format!("bad expirationTimestamp {ts:?}")))?,
            ),
            None => None,
        };
        Ok(ExecOutput {
            token,
            client_cert,
            expiry,
        })
    }
}

/// Parses an RFC 3339 timestamp (`2026-11-27T07:00:00Z`, fractions and offsets allowed)
/// to Unix seconds.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + min * 60 + sec - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ExecSpec {
        ExecSpec {
            command: "plugin".into(),
            args: vec![],
            env: vec![],
            api_version: "client.authentication.k8s.io/v1".into(),
            install_hint: None,
            cluster: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn debug_leaves_out_env_values() {
        let mut s = spec();
        s.env = vec![("AWS_SECRET_ACCESS_KEY".into(), "s3cr3t".into())];
        let dbg = format!("{s:?}");
        assert!(
            dbg.contains("AWS_SECRET_ACCESS_KEY") && !dbg.contains("s3cr3t"),
            "{dbg}"
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-27T07:00:00Z"), Some(1_795_762_800));
        assert_eq!(
            parse_rfc3339("2026-11-27T08:00:00.123+01:00"),
            Some(1_795_762_800)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        for bad in [
            "",
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2026-11-27T07:00:00",
            "x026-11-27T07:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_credentials_and_refuses_bad_ones() {
        let s = spec();
        let out = s
            .parse(br#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t","expirationTimestamp":"1970-01-01T00:01:00Z"}}"#)
            .unwrap();
        assert_eq!(out.token.unwrap().expose(), "t");
        assert_eq!(out.expiry, Some(60));
        let bad: [&[u8]; 4] = [
            br#"{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{"token":"t"}}"#,
            br#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{}}"#,
            br#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"clientKeyData":"k"}}"#,
            b"token=secret",
        ];
        for b in bad {
            let err = s.parse(b).err().unwrap().to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
