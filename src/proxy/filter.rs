//! The request filter: kubectl proxy's accept/reject rules on host, path and method.
//!
//! A pure function of its inputs, so it is unit-tested here and fuzzed in `fuzz/`.
//! Semantics follow kubectl's `FilterServer` (staging/src/k8s.io/kubectl/pkg/proxy):
//! every list flag is split on `,` without escaping and each part is an unanchored,
//! case-sensitive regex; a reject-path wins, then a reject-method, then both an
//! accept-path and an accept-host must match. One deliberate difference: kubectl strips
//! the brackets of an IPv6 host (`[::1]:8001` → `::1`), which its own default
//! `^\[::1\]$` then rejects; we keep them so the default accepts `[::1]`.
//!
//! A second difference closes a bypass kubectl has: the path judged is percent-decoded
//! but not cleaned, so `/%2Fapi/v1/namespaces/d/pods/x/exec` (decoded `//api/…`) or
//! `/x/%2e%2e/api/…/exec` slip past `^/api/.*/exec` while anything that normalises the
//! decoded path on the way (a gateway, an older Go mux, the API server's own
//! `strings.Trim(path, "/")` when it parses the request) serves exec. So a decoded path
//! with empty or dot segments must pass the rules both as it is and cleaned, and one
//! whose `..` climbs above the root is refused (below `--append-server-path` it would
//! reach another cluster's path).

use regex::RegexSet;

/// kubectl's `--accept-hosts` default.
pub const DEFAULT_ACCEPT_HOSTS: &str = r"^localhost$,^127\.0\.0\.1$,^\[::1\]$";
/// kubectl's `--accept-paths` default.
pub const DEFAULT_ACCEPT_PATHS: &str = "^.*";
/// kubectl's `--reject-paths` default (no exec or attach through the proxy), and the
/// node proxy's routes to the kubelet's own exec, attach and port-forward handlers
/// (`/run`, `/exec`, `/attach`, `/portForward` and the CRI streaming server under `/cri`:
/// kubelet `pkg/kubelet/server/server.go`), which kubectl's list misses. As in kubectl, a
/// user's own `--reject-paths` replaces this list whole.
pub const DEFAULT_REJECT_PATHS: &str = r"^/api/.*/pods/.*/exec,^/api/.*/pods/.*/attach,^/api/.*/nodes/.*/proxy/(run|exec|attach|portForward|cri)";
/// kubectl's `--reject-methods` default: matches only the empty method, i.e. nothing.
pub const DEFAULT_REJECT_METHODS: &str = "^$";

/// A flag's pattern failed to compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid regular expression {pattern:?} in --{flag}: {source}")]
pub struct PatternError {
    flag: &'static str,
    pattern: String,
    #[source]
    source: regex::Error,
}

/// The compiled filter: one set per flag, so that a request is one match per flag, not
/// one per pattern (the default reject list alone is three), and one cache checkout
/// (regex's pool) per set.
#[derive(Debug, Clone)]
pub struct Filter {
    accept_hosts: RegexSet,
    accept_paths: RegexSet,
    reject_paths: RegexSet,
    reject_methods: RegexSet,
}

/// The four flag values, as given on the command line.
#[derive(Debug, Clone)]
pub struct FilterSpec<'a> {
    pub accept_hosts: &'a str,
    pub accept_paths: &'a str,
    pub reject_paths: &'a str,
    pub reject_methods: &'a str,
}

impl Default for FilterSpec<'static> {
    fn default() -> Self {
        FilterSpec {
            accept_hosts: DEFAULT_ACCEPT_HOSTS,
            accept_paths: DEFAULT_ACCEPT_PATHS,
            reject_paths: DEFAULT_REJECT_PATHS,
            reject_methods: DEFAULT_REJECT_METHODS,
        }
    }
}

impl Filter {
    pub fn new(spec: &FilterSpec<'_>) -> Result<Self, PatternError> {
        Ok(Filter {
            accept_hosts: compile("accept-hosts", spec.accept_hosts)?,
            accept_paths: compile("accept-paths", spec.accept_paths)?,
            reject_paths: compile("reject-paths", spec.reject_paths)?,
            reject_methods: compile("reject-methods", spec.reject_methods)?,
        })
    }

    /// Decides one request. `path` is the percent-decoded, cleaned path below the API
    /// prefix; `host` is the `Host` header (or `:authority`) as sent, port included.
    pub fn accepts(&self, method: &str, path: &str, host: &str) -> bool {
        if !self.decide(method, path, host) {
            return false;
        }
        match crate::proxy::router::resolve_segments(path) {
            (_, true) => false,
            (cleaned, false) => cleaned == path || self.decide(method, &cleaned, host),
        }
    }

    /// kubectl's rule on one path.
    fn decide(&self, method: &str, path: &str, host: &str) -> bool {
        if self.reject_paths.is_match(path) || self.reject_methods.is_match(method) {
            return false;
        }
        self.accept_paths.is_match(path) && self.accept_hosts.is_match(host_without_port(host))
    }
}

/// The first control character (C0, DEL or C1) of a decoded path, if any. No Kubernetes
/// name holds one, and kubectl's patterns use `.`, which does not match `\n`: with a
/// `%0A` in it, `/api/v1/namespaces/d/pods/x%0a/exec` passes `^/api/.*/pods/.*/exec` and
/// reaches exec. A path holding one is refused before the rules run, so they keep their
/// meaning.
pub fn control_character(decoded: &str) -> Option<char> {
    // Printable ASCII, nearly every path, holds none: a byte test, before decoding chars.
    if decoded.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return None;
    }
    decoded.chars().find(|c| c.is_control())
}

/// kubectl's `MakeRegexpArray`: an empty flag is an empty list (which matches nothing);
/// otherwise every comma-separated part (even an empty one, which matches everything)
/// is a pattern. Each part is compiled on its own first, so that an error names the
/// pattern at fault.
fn compile(flag: &'static str, value: &str) -> Result<RegexSet, PatternError> {
    let patterns: Vec<&str> = if value.is_empty() {
        Vec::new()
    } else {
        value.split(',').collect()
    };
    for p in &patterns {
        regex::Regex::new(p).map_err(|source| PatternError {
            flag,
            pattern: (*p).to_owned(),
            source,
        })?;
    }
    RegexSet::new(&patterns).map_err(|source| PatternError {
        flag,
        pattern: value.to_owned(),
        source,
    })
}

/// The host and port of a request target's authority, which the filter judges: never
/// its userinfo (`localhost:8001@evil.com` names `evil.com`). Requests with userinfo are
/// refused before the filter runs; this keeps the filter right on its own.
pub fn host_and_port(authority: &http::uri::Authority) -> &str {
    let a = authority.as_str();
    a.rfind('@').map_or(a, |at| &a[at + 1..])
}

/// Removes a `:port` suffix, keeping IPv6 brackets (`[::1]:8001` → `[::1]`). A bare
/// IPv6 literal without brackets has no port to remove and is returned whole.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if !host[..i].contains(':') => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/api/v1/namespaces/default/pods";

    fn default_filter() -> Filter {
        Filter::new(&FilterSpec::default()).unwrap()
    }

    /// kubectl's own table (proxy_server_test.go, TestAccept) plus the IPv6 fix.
    #[test]
    fn default_rules_match_kubectl() {
        let f = default_filter();
        let cases: &[(&str, &str, &str, bool)] = &[
            ("GET", "", "127.0.0.1", true),
            ("GET", "/api/v1/pods", "127.0.0.1", true),
            ("GET", "/api/v1/pods", "localhost", true),
            ("GET", &format!("{P}/foo"), "127.0.0.1", true),
            ("GET", &format!("{P}/attachfoo"), "localhost", true),
            ("GET", &format!("{P}/execfoo"), "localhost", true),
            ("GET", "/ui", "localhost", true),
            ("POST", "/api/v1/pods", "localhost", true),
            ("PUT", &format!("{P}/somepod"), "localhost", true),
            ("PATCH", &format!("{P}/somepod"), "localhost", true),
            ("GET", &format!("{P}/foo/exec"), "127.0.0.1", false),
            ("GET", &format!("{P}/foo/attach"), "127.0.0.1", false),
            ("POST", &format!("{P}/somepod/exec"), "localhost", false),
            ("GET", "/api/v1/pods", "evil.com", false),
            ("GET", "/api/v1/pods", "localhost.evil.com", false),
            ("GET", "/api/v1/pods", "127a0b0c1", false),
            ("GET", "/api/v1/pods", "localhost:8001", true),
            ("GET", "/api/v1/pods", "127.0.0.1:8001", true),
            ("GET", "/api/v1/pods", "[::1]:8001", true),
            ("GET", "/api/v1/pods", "[::1]", true),
            ("GET", "/api/v1/pods", "", false),
            ("GET", "/api/v1/pods", "LOCALHOST", false),
        ];
        for (method, path, host, want) in cases {
            assert_eq!(
                f.accepts(method, path, host),
                *want,
                "{method} {path} host={host}"
            );
        }
    }

    #[test]
    fn control_characters_are_found_where_the_regexes_would_miss_them() {
        let f = default_filter();
        let newline = "/api/v1/namespaces/default/pods/x\n/exec";
        // What the refusal before the filter is for: kubectl's rule misses it.
        assert!(f.accepts("GET", newline, "localhost"));
        assert_eq!(control_character(newline), Some('\n'));
        for c in ['\0', '\r', '\t', '\u{1b}', '\u{7f}', '\u{85}'] {
            assert_eq!(control_character(&format!("/api/{c}")), Some(c), "{c:?}");
        }
        assert_eq!(control_character("/api/v1/caf\u{e9}/\u{fffd}"), None);
    }

    #[test]
    fn node_proxy_exec_endpoints_are_refused_by_default() {
        let f = default_filter();
        for endpoint in ["run", "exec", "attach", "portForward", "cri"] {
            for node in ["node-1", "node-1:10250", "https:node-1:10250"] {
                let path = format!("/api/v1/nodes/{node}/proxy/{endpoint}/default/p/c");
                assert!(!f.accepts("GET", &path, "localhost"), "{path}");
            }
        }
        for other in ["metrics", "stats/summary", "logs/", "healthz", "pods"] {
            let path = format!("/api/v1/nodes/node-1/proxy/{other}");
            assert!(f.accepts("GET", &path, "localhost"), "{path}");
        }
    }

    /// Encoded slashes and dots that a normalising upstream would resolve into exec.
    #[test]
    fn decoded_paths_are_judged_cleaned_too() {
        let f = default_filter();
        for bypass in [
            "//api/v1/namespaces/default/pods/x/exec",
            "/x/../api/v1/namespaces/default/pods/p/exec",
            "/./api/v1/namespaces/default/pods/p/exec",
            "/../api/v1/pods",
        ] {
            assert!(!f.accepts("GET", bypass, "localhost"), "{bypass}");
        }
        // A clean path, or one whose cleaned form is as acceptable, still passes.
        assert!(f.accepts("GET", "/api/v1/namespaces/d/pods/x/proxy/a//b", "localhost"));
        assert!(f.accepts("GET", "", "localhost"));
        let ns = Filter::new(&FilterSpec {
            accept_paths: "^/api/v1/namespaces/default/",
            ..FilterSpec::default()
        })
        .unwrap();
        assert!(!ns.accepts(
            "GET",
            "/api/v1/namespaces/default/../kube-system/secrets",
            "localhost"
        ));
    }

    #[test]
    fn reject_methods_and_empty_reject_paths() {
        let f = Filter::new(&FilterSpec {
            reject_methods: "POST,PUT,PATCH",
            ..FilterSpec::default()
        })
        .unwrap();
        for m in ["POST", "PUT", "PATCH"] {
            assert!(!f.accepts(m, &format!("{P}/somepod"), "localhost"), "{m}");
        }
        assert!(f.accepts("GET", &format!("{P}/somepod"), "localhost"));

        let f = Filter::new(&FilterSpec {
            reject_paths: "",
            ..FilterSpec::default()
        })
        .unwrap();
        assert!(f.accepts("POST", &format!("{P}/somepod/exec"), "localhost"));
    }

    #[test]
    fn empty_accept_list_rejects_everything_and_empty_part_matches_all() {
        let f = Filter::new(&FilterSpec {
            accept_paths: "",
            ..FilterSpec::default()
        })
        .unwrap();
        assert!(!f.accepts("GET", "/api", "localhost"));
        let f = Filter::new(&FilterSpec {
            accept_hosts: "^nope$,",
            ..FilterSpec::default()
        })
        .unwrap();
        assert!(f.accepts("GET", "/api", "anything.example"));
    }

    #[test]
    fn bad_pattern_names_the_flag() {
        let err = Filter::new(&FilterSpec {
            reject_paths: "(",
            ..FilterSpec::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--reject-paths"), "{err}");
    }

    #[test]
    fn userinfo_is_never_judged_as_the_host() {
        let host =
            |a: &'static str| host_and_port(&http::uri::Authority::from_static(a)).to_owned();
        assert_eq!(host("localhost:8001@evil.com"), "evil.com");
        assert_eq!(host("evil.com@localhost:8001"), "localhost:8001");
        assert_eq!(host("[::1]:8001"), "[::1]:8001");
        let f = default_filter();
        assert!(!f.accepts("GET", "/api", &host("localhost:8001@evil.com")));
    }

    #[test]
    fn host_port_stripping() {
        assert_eq!(host_without_port("localhost:80"), "localhost");
        assert_eq!(host_without_port("localhost"), "localhost");
        assert_eq!(host_without_port("[::1]:8001"), "[::1]");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("[::1"), "[::1");
    }
}
