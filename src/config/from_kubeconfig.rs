//! A kubeconfig context, with the command-line overrides: the server, its CA, the
//! credential (token, exec plugin, basic auth, client certificate) and impersonation,
//! each in client-go's order of precedence.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};

use super::kubeconfig;
use super::upstream::{
    ConfigError, Impersonation, Overrides, Pieces, ProxyUrl, Upstream, client_cert_flags, finish,
    parse_proxy_url,
};
use crate::credentials::{ExecSpec, Secret, TokenSource};
use crate::tls::{CaSource, ClientCertSource};

/// A kubeconfig context, with command-line overrides.
pub(super) fn from_kubeconfig(
    flags: &Overrides,
    sel: kubeconfig::Selected,
) -> Result<Upstream, ConfigError> {
    let cluster = &sel.cluster;
    let user = &sel.user;
    let url = flags
        .server
        .clone()
        .or_else(|| cluster.server.clone())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ConfigError::NoServerInKubeconfig {
            cluster: sel.cluster_name.clone(),
            files: sel.files.clone(),
        })?;
    let ca_data = match &cluster.certificate_authority_data {
        Some(data) => Some(kubeconfig_data(data).ok_or_else(|| ConfigError::BadBase64 {
            field: "certificate-authority-data",
            name: sel.cluster_name.clone(),
        })?),
        None => None,
    };
    let ca = kubeconfig_ca(flags, &sel, ca_data.as_deref())?;

    let client_cert = match client_cert_flags(flags)? {
        Some(flags) => Some(flags),
        None => kubeconfig_client_cert(&sel)?,
    };
    let token = kubeconfig_token(flags, &sel, &url, ca_data.as_deref())?;
    let impersonate = kubeconfig_impersonation(flags, user);
    let proxy_url = match &cluster.proxy_url {
        Some(p) if !p.expose().is_empty() => Some(ProxyUrl(parse_proxy_url(p.expose())?)),
        _ => None,
    };
    finish(
        flags,
        Pieces {
            url,
            tls_server_name: cluster.tls_server_name.clone(),
            ca,
            client_cert,
            token,
            impersonate,
            proxy_url,
            disable_compression: cluster.disable_compression,
            description: format!(
                "kubeconfig {}, context {}, cluster {}, user {}",
                sel.files,
                sel.context.as_deref().unwrap_or("(none)"),
                sel.cluster_name,
                sel.user_name.as_deref().unwrap_or("(none)")
            ),
            missing_ca_hint: "the kubeconfig cluster's certificate-authority(-data)".to_owned(),
        },
    )
}

/// The CA: the flags' first, then the kubeconfig cluster's; `certificate-authority-data`
/// wins over `certificate-authority` (client-go). Insecure beside a CA is an error, as
/// kubectl makes it.
fn kubeconfig_ca(
    flags: &Overrides,
    sel: &kubeconfig::Selected,
    ca_data: Option<&[u8]>,
) -> Result<Option<CaSource>, ConfigError> {
    let cluster = &sel.cluster;
    Ok(if let Some(path) = &flags.certificate_authority {
        if flags.insecure_skip_tls_verify {
            return Err(ConfigError::CaWithInsecure);
        }
        Some(CaSource::File(path.clone()))
    } else if flags.insecure_skip_tls_verify {
        Some(CaSource::Insecure)
    } else if cluster.insecure_skip_tls_verify {
        if ca_data.is_some() || cluster.certificate_authority.is_some() {
            return Err(ConfigError::CaWithInsecure);
        }
        Some(CaSource::Insecure)
    } else if let Some(pem) = ca_data {
        Some(CaSource::Pem(pem.to_vec()))
    } else {
        cluster.certificate_authority.clone().map(CaSource::File)
    })
}

/// The credential: the flags', else the kubeconfig user's (token file, token, exec
/// plugin, basic auth), in client-go's order.
fn kubeconfig_token(
    flags: &Overrides,
    sel: &kubeconfig::Selected,
    url: &str,
    ca_data: Option<&[u8]>,
) -> Result<TokenSource, ConfigError> {
    let user = &sel.user;
    let user_name = sel.user_name.clone().unwrap_or_default();
    // client-go merges --username/--password over the kubeconfig user's (clientcmd
    // `getUserIdentificationPartialConfig`), and its transport refuses basic auth beside
    // a bearer token ("username/password or bearer token may be set, but not both",
    // client-go transport.New); so does the kubeconfig validation (`validateAuthInfo`).
    Ok(if flags.username.is_some() || flags.password.is_some() {
        let token = if flags.token.is_some() {
            Some("--token".to_owned())
        } else if user.token_file.is_some() || user.token.is_some() {
            Some(format!("kubeconfig user {user_name:?}"))
        } else {
            None
        };
        if let Some(token) = token {
            return Err(ConfigError::BasicWithToken {
                basic: "--username/--password",
                token,
            });
        }
        TokenSource::Basic {
            username: flags
                .username
                .clone()
                .or_else(|| user.username.clone())
                .unwrap_or_default(),
            password: flags
                .password
                .clone()
                .or_else(|| user.password.clone())
                .unwrap_or_else(|| Secret::new("")),
        }
    } else if let Some(token) = &flags.token {
        TokenSource::Static(token.clone(), "--token")
    } else if let Some(path) = &user.token_file {
        TokenSource::File(path.clone())
    } else if let Some(token) = &user.token {
        TokenSource::Static(token.clone(), "kubeconfig token")
    } else if let Some(exec) = &user.exec {
        TokenSource::Exec(Box::new(exec_spec(flags, sel, exec, url, ca_data)?))
    } else if let (Some(username), Some(password)) = (&user.username, &user.password) {
        TokenSource::Basic {
            username: username.clone(),
            password: password.clone(),
        }
    } else if let Some(provider) = &user.auth_provider {
        return Err(ConfigError::AuthProvider {
            user: user_name,
            provider: provider.name.clone(),
            replacement: auth_provider_replacement(&provider.name),
        });
    } else {
        TokenSource::None
    })
}

/// Impersonation: each flag overrides the kubeconfig user's field of the same name.
fn kubeconfig_impersonation(flags: &Overrides, user: &kubeconfig::AuthInfo) -> Impersonation {
    Impersonation {
        user: flags
            .impersonate
            .clone()
            .or_else(|| user.impersonate.clone()),
        groups: if flags.impersonate_groups.is_empty() {
            user.impersonate_groups.clone().unwrap_or_default()
        } else {
            flags.impersonate_groups.clone()
        },
        uid: flags
            .impersonate_uid
            .clone()
            .or_else(|| user.impersonate_uid.clone()),
    }
}

fn kubeconfig_client_cert(
    sel: &kubeconfig::Selected,
) -> Result<Option<ClientCertSource>, ConfigError> {
    let u = &sel.user;
    let origin = || {
        format!(
            "kubeconfig user {:?}",
            sel.user_name.as_deref().unwrap_or("")
        )
    };
    let cert = match (&u.client_certificate_data, &u.client_certificate) {
        (Some(data), _) => Some(Err(data)),
        (None, Some(path)) => Some(Ok(path)),
        (None, None) => None,
    };
    let key = match (&u.client_key_data, &u.client_key) {
        (Some(data), _) => Some(Err(data)),
        (None, Some(path)) => Some(Ok(path)),
        (None, None) => None,
    };
    let decode = |field: &'static str, data: &str| {
        kubeconfig_data(data).ok_or_else(|| ConfigError::BadBase64 {
            field,
            name: sel.user_name.clone().unwrap_or_default(),
        })
    };
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(Ok(cert)), Some(Ok(key))) => Ok(Some(ClientCertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        })),
        (Some(cert), Some(key)) => {
            let cert = match cert {
                Ok(path) => std::fs::read(path).map_err(|source| ConfigError::ReadFile {
                    path: path.clone(),
                    source,
                })?,
                Err(data) => decode("client-certificate-data", data)?,
            };
            let key = match key {
                Ok(path) => std::fs::read(path).map_err(|source| ConfigError::ReadFile {
                    path: path.clone(),
                    source,
                })?,
                Err(data) => decode("client-key-data", data.expose())?,
            };
            Ok(Some(ClientCertSource::Pem { cert, key }))
        }
        _ => Err(ConfigError::HalfClientCert { origin: origin() }),
    }
}

/// Builds the plugin invocation; refuses what cannot work in a proxy.
fn exec_spec(
    flags: &Overrides,
    sel: &kubeconfig::Selected,
    exec: &kubeconfig::ExecConfig,
    url: &str,
    ca_data: Option<&[u8]>,
) -> Result<ExecSpec, ConfigError> {
    let user = sel.user_name.clone().unwrap_or_default();
    let api_version = exec.api_version.clone().unwrap_or_default();
    if !matches!(
        api_version.as_str(),
        "client.authentication.k8s.io/v1" | "client.authentication.k8s.io/v1beta1"
    ) {
        return Err(ConfigError::ExecApiVersion {
            user,
            version: api_version,
        });
    }
    if exec.interactive_mode.as_deref() == Some("Always") {
        return Err(ConfigError::InteractiveExec {
            user,
            command: exec.command.clone(),
        });
    }
    let cluster = exec.provide_cluster_info.then(|| {
        let c = &sel.cluster;
        let ca = match (ca_data, &c.certificate_authority) {
            (Some(pem), _) => Some(pem.to_vec()),
            (None, Some(path)) => std::fs::read(path).ok(),
            (None, None) => None,
        };
        let mut info = serde_json::json!({ "server": url });
        let obj = &mut info;
        if let Some(name) = &c.tls_server_name {
            obj["tls-server-name"] = name.clone().into();
        }
        if c.insecure_skip_tls_verify {
            obj["insecure-skip-tls-verify"] = true.into();
        }
        if let Some(ca) = ca {
            obj["certificate-authority-data"] = STANDARD.encode(&ca).into();
        }
        if let Some(proxy) = c.proxy_url.as_ref().map(Secret::expose) {
            obj["proxy-url"] = proxy.into();
        }
        if c.disable_compression {
            obj["disable-compression"] = true.into();
        }
        let config = c
            .extensions
            .iter()
            .flatten()
            .find(|e| e.name == "client.authentication.k8s.io/exec")
            .and_then(|e| e.extension.clone());
        if let Some(config) = config {
            obj["config"] = config;
        }
        info
    });
    Ok(ExecSpec {
        command: exec.command.clone(),
        args: exec.args.clone().unwrap_or_default(),
        env: exec
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        api_version,
        install_hint: exec.install_hint.clone(),
        cluster,
        timeout: flags.exec_timeout,
    })
}

/// The exec plugin that replaced each in-tree auth provider (removed in kubectl 1.26).
fn auth_provider_replacement(name: &str) -> &'static str {
    match name {
        "gcp" => {
            "gke-gcloud-auth-plugin (https://cloud.google.com/kubernetes-engine/docs/how-to/cluster-access-for-kubectl)"
        }
        "azure" => "kubelogin (https://azure.github.io/kubelogin/)",
        "oidc" => "an OIDC exec plugin such as kubelogin (kubectl oidc-login)",
        _ => "the exec credential plugin your provider documents",
    }
}

/// A kubeconfig `*-data` field, decoded as client-go does: Go's `encoding/json` reads a
/// `[]byte` with `base64.StdEncoding`, which takes the standard alphabet only, skips
/// `\r` and `\n` (wrapped data), and is not strict about the unused bits of the last
/// character (Go's `Encoding.Strict` is off by default).
pub(super) fn kubeconfig_data(data: &str) -> Option<Vec<u8>> {
    const GO_STD: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
            .with_decode_allow_trailing_bits(true),
    );
    let unwrapped: Vec<u8> = data
        .bytes()
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .collect();
    GO_STD.decode(unwrapped).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_data_is_decoded_as_go_decodes_it() {
        assert_eq!(kubeconfig_data("Zm9v\nYmFy").unwrap(), b"foobar", "wrapped");
        assert_eq!(kubeconfig_data("Zm9vYg==").unwrap(), b"foob");
        // Go's StdEncoding: not strict about the last character's unused bits.
        assert_eq!(kubeconfig_data("Zh==").unwrap(), b"f");
        assert!(
            kubeconfig_data("-_8=").is_none(),
            "the URL-safe alphabet is not Go's"
        );
        assert!(
            kubeconfig_data("Zm9vYg").is_none(),
            "StdEncoding wants its padding"
        );
        assert!(
            kubeconfig_data("Zm9v YmFy").is_none(),
            "only CR and LF are skipped"
        );
        assert!(kubeconfig_data("Zg==Zg").is_none());
    }
}
