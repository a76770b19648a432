//! Side by side with the real `kubectl proxy`: one fake API server, one kubeconfig, and for
//! each set of flags both `kubectl proxy` and kube-ambassador started with them. Every
//! case sends both the same bytes and asserts the same outcome: the status; the body and
//! the telling headers of a response the proxy made itself (403, 404, 301, 400); and for a
//! request that reached the API server, what arrived there (method, raw target, Host,
//! every forwarded header, `X-Forwarded-For`, the credential, `Impersonate-*`).
//!
//! Where we differ on purpose, the case names an entry of [`DIFFERENCES`] and asserts our
//! side's behaviour (and kubectl's, so that the entry stays true). The README's
//! "Differences from kubectl proxy" section lists exactly these entries, in this order
//! (checked by `the_readme_lists_exactly_the_differences`). Where we differ and it is not
//! deliberate, the case names an entry of [`KNOWN_GAPS`] instead and pins today's
//! behaviour, so that closing the gap shows.
//!
//! `COMPAT_REPORT=1 cargo test --test it compat:: -- --nocapture` prints both outcomes of
//! every case.
//!
//! The whole suite skips, saying why, when `kubectl` is not on PATH (and fails instead
//! when `CI` is set, so that CI never counts a skip as a pass).

use crate::support;

mod cases;
mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{Addr, Kubectl, Outcome, Req};
use support::{FakeApi, FakeApiOptions, Pki, Proxy, World};

/// Every deliberate difference from `kubectl proxy`: a name the cases refer to, and the
/// README's wording of it (the README lists exactly these, in this order).
pub const DIFFERENCES: &[(&str, &str)] = &[
    (
        "ipv6-host",
        "`Host: [::1]:8001` is accepted by the default `--accept-hosts` (kubectl strips the \
         brackets before matching its own `^\\[::1\\]$`, so it refuses it).",
    ),
    (
        "status-json",
        "The proxy's own failures (API server unreachable, TLS refused, an upgrade answered \
         with neither 101 nor an error) are a Kubernetes `Status` JSON with 502, 503 or 504, \
         not `500 text/plain`; kubectl's discovery requests (`GET /api`, `/apis`), whose \
         client reads no `Status`, get the same message as `502 text/plain`, so kubectl \
         shows it.",
    ),
    (
        "token-rotation",
        "A rotated token file is used by the next request, not up to a minute later \
         (client-go re-reads it about every 50 s); a 401 caused by a rotation is retried \
         with the new token (requests without a body).",
    ),
    (
        "redirect-escapes",
        "The 301 for an unclean path keeps the percent-escapes as sent (kubectl's Go mux \
         double-encodes them: `/a//b%2Fc` → `/a/b%252Fc`, a different resource), and \
         escapes once what a URI may not hold (`/./\\evil.example/x` → \
         `/%5Cevil.example/x`; kubectl: `/%255Cevil.example/x`).",
    ),
    (
        "keepalive-zero",
        "`--keepalive` sets the TCP keep-alive period of every connection to the API \
         server, 0 meaning client-go's 30 s. kubectl's reaches only its upgrade \
         connections, where 0 means Go's 15 s (not off, whatever its help text says); its \
         API requests always use 30 s.",
    ),
    (
        "sigterm-drain",
        "SIGTERM drains (see above); kubectl exits at once.",
    ),
    (
        "configured-roots",
        "Roots are the configured CA only, never the system store.",
    ),
    (
        "no-gzip-added",
        "The API server is not asked for gzip on the client's behalf: `Accept-Encoding` goes \
         as the client sent it. kubectl's Go transport adds `gzip` when the client sent \
         none and unzips the answer itself, so the API server spends CPU compressing and \
         the proxy decompressing for a client that did not ask; in a cluster the API \
         server's CPU is scarcer than the bandwidth to it, and a client that wants gzip \
         asks for it and gets it end to end.",
    ),
    (
        "upgrade-hop-by-hop",
        "An upgrade request (exec, attach, port-forward) loses its hop-by-hop headers like \
         any other request (`Keep-Alive`, `Proxy-Authorization`, those named in \
         `Connection`), and its `Connection` header is sent as `Upgrade`; kubectl forwards \
         them as the client sent them, a `Proxy-Authorization` meant for the proxy \
         included.",
    ),
    (
        "connect-refused",
        "`CONNECT` is refused with a `400` Status naming it (kubectl's mux answers a \
         `301` to `/`, which a client would follow as a GET of the API root).",
    ),
    (
        "escapes-kept",
        "The path reaches the API server with its percent-escapes as sent. kubectl \
         re-encodes it from its decoded form below a custom `--api-prefix`, and whenever it \
         holds a character that must be escaped (`|`, `{`, non-ASCII…): `%2F` then reaches \
         the API server as `/` and `%2e%2e` as `..`, another resource. (Characters that \
         must be escaped are escaped by both.)",
    ),
    (
        "disable-compression",
        "`--disable-compression` also removes the client's own `Accept-Encoding`, so no \
         response is compressed, as the flag says; kubectl only stops adding `gzip` itself \
         (which kube-ambassador never does).",
    ),
    (
        "www-dotdot",
        "`--www`: a path that climbs out of the directory with an encoded `..` \
         (`/static/%2e%2e/x`) is a 404, not clamped at the directory's root (it names no \
         file in the directory; serving another one hides the client's mistake).",
    ),
    (
        "www-symlink-out",
        "`--www`: a symlink that leads out of the directory is a 404; kubectl follows it \
         and serves whatever it points at. Nothing outside the directory is ever served.",
    ),
    (
        "www-methods",
        "`--www`: methods other than GET and HEAD get `405 Method Not Allowed` with \
         `Allow: GET, HEAD`; kubectl serves the file whatever the method, so a mistaken \
         POST or DELETE looks like it worked.",
    ),
    (
        "www-no-sniff",
        "`--www`: a file whose extension is unknown is `application/octet-stream`; kubectl \
         guesses a type from the content, so what a browser makes of a file depends on \
         what it happens to contain.",
    ),
    (
        "dot-segments-judged",
        "The filter judges a path whose decoded form has empty or dot segments (`%2F`, \
         `%2e%2e`) both as sent and cleaned, and refuses a `..` that climbs above the root: \
         kubectl judges only the decoded path, so `/%2Fapi/v1/namespaces/d/pods/x/exec` \
         (decoded `//api/…`) passes its `^/api/.*/exec` rule while anything that normalises \
         the path on the way to the API server serves exec.",
    ),
    (
        "userinfo",
        "A request target or h2c `:authority` with userinfo (`http://user@host/…`) is \
         refused with a `400`, as Go's server refuses a `Host` with userinfo; kubectl \
         judges the host after the `@`, so it refuses \
         `http://localhost:8001@evil.com/` but forwards `http://evil.com@localhost:8001/`.",
    ),
    (
        "control-characters",
        "A path whose decoded form holds a control character (`%0A`, `%00`, `%1B`, …) is \
         refused with a `400` Status before the filter runs. kubectl's default patterns use \
         `.`, which does not match a newline, so `/api/v1/namespaces/d/pods/x%0a/exec` \
         reaches exec through it; no Kubernetes name can hold a control character.",
    ),
    (
        "node-proxy-exec",
        "The default `--reject-paths` also refuses the node proxy's routes to the \
         kubelet's exec, attach and port-forward handlers, \
         `/api/v1/nodes/NAME/proxy/{run,exec,attach,portForward,cri}`, which kubectl's \
         list misses. A `--reject-paths` of your own replaces the defaults, as in kubectl.",
    ),
    (
        "log-escapes",
        "Control characters from a request are escaped in every log line (`\\n`, \
         `\\u{1b}`), in both formats, so a request cannot forge a log line or drive the \
         terminal of whoever reads the log; kubectl logs them as they came.",
    ),
    (
        "connection-budget",
        "`--max-connections` defaults to 2,048 (kubectl has no limit), and each stream of an \
         h2c connection counts as one more; an h2c connection gets at most 100 concurrent \
         streams and a 64 KiB send buffer per stream (kubectl does not speak h2c).",
    ),
    (
        "hedged-requests",
        "A short idempotent request without response headers after \
         `--upstream-hedge-after` is sent once more (see [Hedged \
         requests](#hedged-requests)); kubectl waits for a frozen HTTP/1.1 connection as \
         long as its client does.",
    ),
];

/// Where we differ from kubectl and it is *not* deliberate: neither better nor clearly a
/// bug, so neither fixed nor in the README's list. The cases naming one assert today's
/// behaviour, so that a fix shows up here (and the entry must then go).
pub const KNOWN_GAPS: &[(&str, &str)] = &[
    (
        "uri-chars",
        "`<`, `>` or a backtick in the request target: hyper refuses it with a bodiless 400 \
         before the proxy sees it; Go accepts it and kubectl forwards it escaped",
    ),
    (
        "oversized-head",
        "a request head over the HTTP server's limit gets hyper's 431 with no body (Go: \
         `431 Request Header Fields Too Large` as text); the limits differ too (hyper about \
         400 KiB, Go 1 MiB)",
    ),
];

/// Differences no case here can show side by side, and why.
pub const NOT_SIDE_BY_SIDE: &[(&str, &str)] = &[
    (
        "keepalive-zero",
        "a socket option on the upstream connection (src/upstream/connector.rs): nothing the fake \
         API server can observe; tests/it/upstream_h1.rs reads it from the kernel",
    ),
    (
        "log-escapes",
        "the cases compare answers and what reached the API server, not logs; \
         tests/it/hardening.rs checks both log formats",
    ),
    (
        "connection-budget",
        "kubectl proxy does not speak h2c, and reaching 2,048 connections through both \
         proxies is a load test; tests/it/hardening.rs checks the budget with a small limit",
    ),
    (
        "hedged-requests",
        "needs a connection that freezes between the proxy and the API server (a relay); \
         tests/it/hedge.rs shows it",
    ),
    (
        "configured-roots",
        "needs an API server whose certificate a public CA signed; against the fake, \
         without its CA, both simply fail (the \"status-json\" cases show how)",
    ),
];

/// Looks up a difference (or known gap) by name (a case naming an unlisted one is a bug
/// in the suite).
pub fn difference(name: &str) -> &'static str {
    DIFFERENCES
        .iter()
        .chain(KNOWN_GAPS)
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
        .unwrap_or_else(|| {
            panic!("case names difference {name:?}, which neither DIFFERENCES nor KNOWN_GAPS has")
        })
}

/// What kubectl is expected to do with a request (checked on kubectl's side; our side
/// must then do the same, or what the case's difference says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The request reaches the API server (whatever it answers).
    Reach,
    /// The proxy answers this status itself; nothing reaches the API server.
    Made(u16),
    /// 101, and bytes written into the tunnel come back from the fake's echo.
    Tunnel,
    /// Nothing listens any more.
    Refused,
}

type Check = Box<dyn Fn(&Outcome) -> Result<(), String> + Send + Sync>;
type DiffCheck = Box<dyn Fn(&Outcome, &Outcome) -> Result<(), String> + Send + Sync>;

/// One request sent to both proxies, and what must come of it.
pub struct Case {
    pub name: String,
    pub req: Req,
    /// kubectl's outcome.
    pub want: Want,
    /// An extra assertion made on both sides (e.g. the target the API server saw).
    pub check: Option<Check>,
    /// A named deliberate difference: the check gets (kubectl's, ours).
    pub diff: Option<(&'static str, DiffCheck)>,
}

impl Case {
    pub fn same(name: &str, req: Req, want: Want) -> Case {
        Case {
            name: name.into(),
            req,
            want,
            check: None,
            diff: None,
        }
    }

    pub fn differs(
        name: &str,
        req: Req,
        want: Want,
        difference_name: &'static str,
        ours: impl Fn(&Outcome, &Outcome) -> Result<(), String> + Send + Sync + 'static,
    ) -> Case {
        Case {
            name: name.into(),
            req,
            want,
            check: None,
            diff: Some((difference_name, Box::new(ours))),
        }
    }

    /// Like [`Case::differs`], for an entry of [`KNOWN_GAPS`].
    pub fn gap(
        name: &str,
        req: Req,
        want: Want,
        gap_name: &'static str,
        ours: impl Fn(&Outcome, &Outcome) -> Result<(), String> + Send + Sync + 'static,
    ) -> Case {
        assert!(
            KNOWN_GAPS.iter().any(|(n, _)| *n == gap_name),
            "{gap_name} is not a known gap"
        );
        Case::differs(name, req, want, gap_name, ours)
    }

    /// Both sides: the API server saw this request target.
    pub fn uri(self, uri: &str) -> Case {
        let uri = uri.to_owned();
        self.check(move |o| {
            let seen = &o.seen().uri;
            (*seen == uri)
                .then_some(())
                .ok_or(format!("API server saw {seen:?}, want {uri:?}"))
        })
    }

    /// Both sides: an extra assertion.
    pub fn check(
        mut self,
        f: impl Fn(&Outcome) -> Result<(), String> + Send + Sync + 'static,
    ) -> Case {
        self.check = Some(Box::new(f));
        self
    }
}

/// The kubeconfig both proxies are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kubeconfig {
    /// Server = the fake API server's URL + this path, CA = its CA, `token`.
    Token { server_path: &'static str },
    /// Like `Token` but the token is in a `tokenFile`.
    TokenFile,
    /// A server URL where nothing listens.
    Unreachable,
    /// The fake API server, verified with another CA.
    WrongCa,
}

/// A step of a group: a case, or something done to both sides between cases.
pub enum Step {
    Case(Box<Case>),
    /// Replaces the `tokenFile`'s content (written beside it, renamed over it).
    RotateToken(&'static str),
    /// SIGTERM to both proxies.
    Terminate,
}

/// Cases sharing one set of flags: each pair of proxies is started once per group.
pub struct Group {
    pub name: &'static str,
    pub flags: Vec<String>,
    pub kubeconfig: Kubeconfig,
    /// Listen on a unix socket (`-u`) instead of `--port=0`.
    pub unix: bool,
    pub steps: Vec<Step>,
}

impl Group {
    pub fn new(name: &'static str, flags: &[&str], steps: Vec<Step>) -> Group {
        Group {
            name,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            kubeconfig: Kubeconfig::Token { server_path: "" },
            unix: false,
            steps,
        }
    }

    pub fn kubeconfig(mut self, k: Kubeconfig) -> Group {
        self.kubeconfig = k;
        self
    }

    pub fn unix(mut self) -> Group {
        self.unix = true;
        self
    }

    pub fn cases(&self) -> impl Iterator<Item = &Case> {
        self.steps.iter().filter_map(|s| match s {
            Step::Case(c) => Some(&**c),
            _ => None,
        })
    }
}

pub const TOKEN: &str = "compat-token-1";
pub const ROTATED_TOKEN: &str = "compat-token-2";

/// The directory `--www` serves, and what is around it.
fn write_www(base: &Path) -> PathBuf {
    let www = base.join("www");
    std::fs::create_dir_all(www.join("sub")).unwrap();
    std::fs::create_dir_all(www.join("empty")).unwrap();
    std::fs::write(www.join("hello.txt"), "hello, static world\n").unwrap();
    std::fs::write(www.join("empty.txt"), "").unwrap();
    std::fs::write(www.join("index.html"), "<h1>index</h1>\n").unwrap();
    std::fs::write(www.join("a b.txt"), "a file with a space\n").unwrap();
    std::fs::write(www.join("style.css"), "body { color: red }\n").unwrap();
    std::fs::write(
        www.join("notes.unknownext"),
        "plain words, no extension known\n",
    )
    .unwrap();
    std::fs::write(www.join("sub/a.txt"), "in sub\n").unwrap();
    std::fs::write(www.join("sub/b.json"), "{\"b\":1}\n").unwrap();
    std::fs::write(base.join("outside.txt"), "outside the www directory\n").unwrap();
    std::os::unix::fs::symlink(base.join("outside.txt"), www.join("link-out.txt")).unwrap();
    std::os::unix::fs::symlink("hello.txt", www.join("link-in.txt")).unwrap();
    www
}

/// Starts the pair for `group`, runs its steps, and returns the failures.
async fn run_group(kubectl: &Path, group: Group) -> Vec<String> {
    let pki = Pki::new();
    let api =
        FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN, ROTATED_TOKEN])).await;
    let world = World::new();
    let ca = world.file("ca.crt", &pki.ca_pem());
    let token_file = world.base().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let kubeconfig = match group.kubeconfig {
        Kubeconfig::Token { server_path } => {
            world.kubeconfig(&format!("{}{server_path}", api.url()), &ca, TOKEN)
        }
        Kubeconfig::TokenFile => world.kubeconfig_yaml(&format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\nusers:\n- name: fake\n  user:\n    tokenFile: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            api.url(),
            ca.display(),
            token_file.display()
        )),
        Kubeconfig::Unreachable => {
            // A port that was free a moment ago.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            world.kubeconfig(&format!("https://127.0.0.1:{port}"), &ca, TOKEN)
        }
        Kubeconfig::WrongCa => {
            let other = world.file("other-ca.crt", &Pki::new().ca_pem());
            world.kubeconfig(&api.url(), &other, TOKEN)
        }
    };
    let www = write_www(world.base());
    let fill = |f: &String| f.replace("{www}", &www.display().to_string());
    let flags: Vec<String> = group.flags.iter().map(fill).collect();

    let home_k = world.base().join("home-kubectl");
    let home_o = world.base().join("home-ours");
    std::fs::create_dir_all(&home_k).unwrap();
    std::fs::create_dir_all(&home_o).unwrap();
    let mut args_k = flags.clone();
    let kc = format!("--kubeconfig={}", kubeconfig.display());
    let mut args_o = vec![kc];
    if group.unix {
        args_k.push(format!(
            "--unix-socket={}",
            world.base().join("kubectl.sock").display()
        ));
        args_o.push(format!(
            "--unix-socket={}",
            world.base().join("ours.sock").display()
        ));
    } else {
        args_k.push("--port=0".into());
        args_o.push("--port=0".into());
    }
    args_o.extend(flags.iter().cloned());
    let home_o_str = home_o.display().to_string();
    let args_o_ref: Vec<&str> = args_o.iter().map(String::as_str).collect();
    let env_o = [("HOME", home_o_str.as_str())];
    let (k, ours) = tokio::join!(
        Kubectl::start(kubectl, &kubeconfig, &home_k, &args_k),
        Proxy::start(&args_o_ref, &env_o),
    );
    let ours_addr = match &ours.addr {
        support::ProxyAddr::Tcp(a) => Addr::Tcp(*a),
        support::ProxyAddr::Unix(p) => Addr::Unix(p.clone()),
    };

    let report = std::env::var_os("COMPAT_REPORT").is_some();
    let mut failures = Vec::new();
    for step in &group.steps {
        let case = match step {
            Step::Case(c) => c,
            Step::RotateToken(new) => {
                let tmp = world.base().join("token.tmp");
                std::fs::write(&tmp, new).unwrap();
                std::fs::rename(&tmp, &token_file).unwrap();
                ours.wait_stderr("token changed on disk").await;
                continue;
            }
            Step::Terminate => {
                k.terminate();
                ours.signal("TERM");
                assert!(
                    k.exited_within(Duration::from_secs(10)).await,
                    "kubectl proxy still running 10 s after SIGTERM"
                );
                continue;
            }
        };
        let what = format!("[{}] {}", group.name, case.name);
        let tag = format!("{}/{}", group.name, case.name).replace(' ', "_");
        let ko = harness::run(&k.addr, &api, &format!("{tag}/kubectl"), &case.req).await;
        let oo = harness::run(&ours_addr, &api, &format!("{tag}/ours"), &case.req).await;
        if report {
            eprintln!(
                "==== {what}\n  kubectl: {}\n  ours:    {}",
                brief(&ko),
                brief(&oo)
            );
        }
        let mut errs = Vec::new();
        if let Err(e) = want(case.want, &ko) {
            errs.push(format!("kubectl: {e}"));
        }
        match &case.diff {
            None => {
                errs.extend(compare(&case.req, &ko, &oo));
                if let Some(check) = &case.check {
                    for (side, o) in [("kubectl", &ko), ("ours", &oo)] {
                        if (o.seen.is_some() || matches!(case.want, Want::Made(_)))
                            && let Err(e) = check(o)
                        {
                            errs.push(format!("{side}: {e}"));
                        }
                    }
                }
            }
            Some((name, ours_check)) => {
                difference(name);
                if let Err(e) = ours_check(&ko, &oo) {
                    errs.push(format!("difference {name:?}: {e}"));
                }
            }
        }
        if !errs.is_empty() {
            failures.push(format!(
                "{what}:\n    {}\n    request: {:?}\n    kubectl: {}\n    ours:    {}",
                errs.join("\n    "),
                case.req,
                brief(&ko),
                brief(&oo)
            ));
        }
    }
    if !failures.is_empty() {
        failures.push(format!(
            "[{}] kubectl stderr:\n{}\n[{}] our stderr (tail):\n{}",
            group.name,
            k.stderr(),
            group.name,
            tail(&ours.stderr(), 30)
        ));
    }
    failures
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A one-line summary of an outcome for failure messages.
fn brief(o: &Outcome) -> String {
    if o.refused {
        return "connection refused".into();
    }
    let mut s = format!(
        "{} {:?} body={:?}",
        o.status,
        o.headers
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "date" | "audit-id"))
            .collect::<Vec<_>>(),
        o.body.chars().take(300).collect::<String>()
    );
    if let Some(e) = o.tunnel_echoed {
        s += &format!(" tunnel_echoed={e}");
    }
    match &o.seen {
        Some(seen) => {
            s += &format!(
                "\n      API saw: {} {} token={:?} body_len={} headers={:?}",
                seen.method,
                seen.uri,
                seen.token,
                seen.body_len,
                seen.headers
                    .iter()
                    .filter(|(n, _)| n != harness::TAG)
                    .collect::<Vec<_>>()
            );
        }
        None => s += "\n      API saw nothing",
    }
    s
}

/// kubectl's side meets the case's expectation.
fn want(w: Want, o: &Outcome) -> Result<(), String> {
    match w {
        Want::Reach if o.seen.is_none() => {
            Err("expected the request to reach the API server".into())
        }
        Want::Reach if o.refused => Err("connection refused".into()),
        Want::Reach => Ok(()),
        Want::Made(code) if o.status != code || o.seen.is_some() => Err(format!(
            "expected the proxy's own {code}, got {} (reached the API: {})",
            o.status,
            o.seen.is_some()
        )),
        Want::Made(_) => Ok(()),
        Want::Tunnel if o.status != 101 || o.tunnel_echoed != Some(true) => Err(format!(
            "expected a working tunnel, got {} (echoed: {:?})",
            o.status, o.tunnel_echoed
        )),
        Want::Tunnel => Ok(()),
        Want::Refused if !o.refused => Err(format!("expected no listener, got {}", o.status)),
        Want::Refused => Ok(()),
    }
}

/// Headers of a proxy-made response that must match (`Content-Type` too, compared with
/// the body in [`compare`], a multipart boundary aside).
const MADE_HEADERS: &[&str] = &[
    "location",
    "x-content-type-options",
    "allow",
    "content-range",
    "last-modified",
    "accept-ranges",
];

/// Response headers from the API server (or a file) that must come back the same.
const RELAYED_HEADERS: &[&str] = &[
    "content-type",
    "location",
    "upgrade",
    "sec-websocket-accept",
];

/// The request headers the API server saw, for comparison. Left out: the tag; `Host`
/// (compared on its own: kubectl speaks HTTP/2 to the API server, where it is
/// `:authority`); `Transfer-Encoding` (framing of that hop: HTTP/2 has none); and
/// `User-Agent` and `Accept-Encoding` unless the client sent them (kubectl adds its own
/// of both, we add our own `User-Agent`: see the "no-gzip-added" difference).
fn forwarded(req: &Req, o: &Outcome) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = o
        .seen()
        .headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), harness::TAG | "host" | "transfer-encoding"))
        .filter(|(n, _)| n != "user-agent" || req.has_header("user-agent"))
        .filter(|(n, _)| n != "accept-encoding" || req.has_header("accept-encoding"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    // Grouped by name, values in order (HTTP/2 and HTTP/1.1 may order names differently).
    h.sort_by(|a, b| a.0.cmp(&b.0));
    h
}

/// The `Content-Type` and body of a response, with a `multipart/byteranges` boundary
/// (random on both sides) replaced by one placeholder.
fn without_boundary(o: &Outcome) -> (Option<String>, String) {
    let ctype = o.header("content-type");
    match ctype.and_then(|c| c.strip_prefix("multipart/byteranges; boundary=")) {
        Some(b) if !b.is_empty() => (
            Some("multipart/byteranges; boundary=BOUNDARY".into()),
            o.body.replace(b, "BOUNDARY"),
        ),
        _ => (ctype.map(str::to_owned), o.body.clone()),
    }
}

/// Everything that must be equal between the two outcomes of one request.
fn compare(req: &Req, k: &Outcome, o: &Outcome) -> Vec<String> {
    let mut errs = Vec::new();
    let mut eq = |what: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        let (a, b) = (format!("{a:?}"), format!("{b:?}"));
        if a != b {
            errs.push(format!("{what}: kubectl {a}, ours {b}"));
        }
    };
    eq("listening", &!k.refused, &!o.refused);
    eq("status", &k.status, &o.status);
    eq(
        "reached the API server",
        &k.seen.is_some(),
        &o.seen.is_some(),
    );
    eq("tunnel echo", &k.tunnel_echoed, &o.tunnel_echoed);
    match (&k.seen, &o.seen) {
        (None, None) => {
            let (k_type, k_body) = without_boundary(k);
            let (o_type, o_body) = without_boundary(o);
            eq("content-type", &k_type, &o_type);
            eq("body", &k_body, &o_body);
            for h in MADE_HEADERS {
                eq(h, &k.header(h), &o.header(h));
            }
            // Go writes its own 400s and 431s without a length, and closes.
            if k.header("content-length").is_some() {
                eq(
                    "content-length",
                    &k.header("content-length"),
                    &o.header("content-length"),
                );
            }
        }
        (Some(ks), Some(os)) => {
            eq("method", &ks.method, &os.method);
            eq("target", &ks.uri, &os.uri);
            eq(
                "Host",
                &ks.header("host").or(ks.authority.as_deref()),
                &os.header("host").or(os.authority.as_deref()),
            );
            eq("credential", &ks.token, &os.token);
            eq(
                "request body",
                &(ks.body_len, &ks.body_sha256),
                &(os.body_len, &os.body_sha256),
            );
            eq("forwarded headers", &forwarded(req, k), &forwarded(req, o));
            for h in RELAYED_HEADERS {
                eq(h, &k.header(h), &o.header(h));
            }
            // `/echo` reports the request, tag and User-Agent included.
            if !ks.path.starts_with("/echo") && k.status != 101 {
                eq("body", &k.body, &o.body);
            }
        }
        _ => {}
    }
    errs
}

async fn run(groups: Vec<Group>) {
    let Some(kubectl) = harness::kubectl() else {
        return;
    };
    let mut failures = Vec::new();
    for g in groups {
        failures.extend(run_group(&kubectl, g).await);
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_flags() {
    run(vec![cases::default_flags()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_flags() {
    run(cases::filter_groups()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_prefix_and_server_path() {
    run(cases::prefix_groups()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files() {
    run(vec![cases::www(), cases::www_ranges(), cases::www_nested()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket() {
    run(vec![cases::unix_socket()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation() {
    run(vec![cases::impersonation()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_rotation_and_shutdown() {
    run(cases::lifecycle_groups()).await;
}

/// `kubectl proxy` and kube-ambassador side by side, each on a port of its own, with one
/// kubeconfig for `server` (trusting `ca`) and a `HOME` of the world's; kubectl's
/// address comes back with them.
async fn both_for(
    kubectl: &Path,
    world: &World,
    server: &str,
    ca: &Path,
) -> (Kubectl, Proxy, std::net::SocketAddr) {
    let kubeconfig = world.kubeconfig(server, ca, TOKEN);
    let home = world.base().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let kc = format!("--kubeconfig={}", kubeconfig.display());
    let home_str = home.display().to_string();
    let k_args = ["--port=0".to_owned()];
    let o_args = [kc.as_str(), "--port=0"];
    let o_env = [("HOME", home_str.as_str())];
    let (k, ours) = tokio::join!(
        Kubectl::start(kubectl, &kubeconfig, &home, &k_args),
        Proxy::start(&o_args, &o_env),
    );
    let Addr::Tcp(k_addr) = k.addr else {
        unreachable!("kubectl proxy listens on TCP here")
    };
    (k, ours, k_addr)
}

/// Watches: kubectl (Go's reverse proxy) flushes a response without a length at every
/// write, as we do; its 200 ms flush interval is for responses with one. So an event
/// reaches the client at once through both (a 200 ms timer would delay every isolated
/// event by about 200 ms: the fastest of five shows whether one is in the way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_are_streamed_at_once_by_both() {
    let Some(kubectl) = harness::kubectl() else {
        return;
    };
    let pki = Pki::new();
    let api = FakeApi::start(FakeApiOptions::new(pki.clone()).tokens(&[TOKEN])).await;
    let world = World::new();
    let ca = world.file("ca.crt", &pki.ca_pem());
    let (_k, ours, k_addr) = both_for(&kubectl, &world, &api.url(), &ca).await;
    let path = "/api/v1/namespaces/default/pods?watch=1&resourceVersion=1";
    let mut k_watch = support::client::get_stream(&format!("http://{k_addr}{path}"), &[]).await;
    let mut o_watch = support::client::get_stream(&ours.url(path), &[]).await;
    assert_eq!(
        (k_watch.status.as_u16(), o_watch.status.as_u16()),
        (200, 200)
    );
    api.wait_open_watches(2).await;
    let (mut k_fastest, mut o_fastest) = (Duration::MAX, Duration::MAX);
    for i in 0..5 {
        let name = format!("watched-{i}");
        let sent = tokio::time::Instant::now();
        api.send_watch_event("ADDED", &name);
        let took = |line: Option<String>| {
            let line = line.expect("the watch ended");
            assert!(line.contains(&name), "unexpected event {line}");
            sent.elapsed()
        };
        let (kt, ot) = support::within("the event through both proxies", async {
            tokio::join!(async { took(k_watch.next_line().await) }, async {
                took(o_watch.next_line().await)
            })
        })
        .await;
        k_fastest = k_fastest.min(kt);
        o_fastest = o_fastest.min(ot);
        // Well apart, so that a flush timer would start afresh for each event.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("fastest event: kubectl {k_fastest:?}, ours {o_fastest:?}");
    assert!(
        k_fastest < Duration::from_millis(100),
        "kubectl: fastest event took {k_fastest:?}"
    );
    assert!(
        o_fastest < Duration::from_millis(100),
        "ours: fastest event took {o_fastest:?}"
    );
}

/// `kubectl get pods` with a cold discovery cache and the API server down, through
/// `kubectl proxy` and through us: kubectl's discovery client drops a JSON `Status` and
/// keeps only a `text/plain` body's words (and not even those for a 503), so both
/// proxies answer discovery with a plain-text 5xx, and kubectl shows the cause through
/// both. A typed client asking for the same path gets our `Status` (502, InternalError).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_api_server_down_kubectl_shows_the_cause_through_both() {
    let Some(kubectl) = harness::kubectl() else {
        return;
    };
    let world = World::new();
    // A port nothing listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("https://{}", dead.local_addr().unwrap());
    drop(dead);
    let pki = Pki::new();
    let ca = world.file("ca.crt", &pki.ca_pem());
    let (_k, ours, k_addr) = both_for(&kubectl, &world, &dead_url, &ca).await;
    let home = world.base().join("home");
    let get_pods = |server: String, cache: &str| {
        let mut cmd = std::process::Command::new(&kubectl);
        cmd.arg(format!("--server=http://{server}"))
            .arg(format!(
                "--cache-dir={}",
                world.base().join(cache).display()
            ))
            .args(["--request-timeout=20s", "get", "pods"])
            .env("KUBECONFIG", world.file("empty-kubeconfig", ""))
            .env("HOME", &home)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT");
        async move {
            let out = support::within(
                "kubectl get pods",
                tokio::task::spawn_blocking(move || cmd.output().expect("run kubectl")),
            )
            .await
            .expect("kubectl thread");
            assert!(!out.status.success());
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            stderr.lines().last().unwrap_or("").to_owned()
        }
    };
    let through_kubectl = get_pods(k_addr.to_string(), "cache-k").await;
    let through_ours = get_pods(ours.socket_addr().to_string(), "cache-o").await;
    let port = dead_url.rsplit(':').next().unwrap();
    assert_eq!(
        through_kubectl,
        format!(
            "Error from server (InternalError): an error on the server (\"dial tcp \
             127.0.0.1:{port}: connect: connection refused\") has prevented the request from \
             succeeding"
        )
    );
    assert_eq!(
        through_ours,
        format!(
            "Error from server (InternalError): an error on the server (\"error trying to \
             reach the API server at {dead_url}: connection refused\") has prevented the \
             request from succeeding"
        )
    );
    if std::env::var_os("COMPAT_REPORT").is_some() {
        eprintln!("kubectl proxy: {through_kubectl}\nkube-ambassador: {through_ours}");
    }

    // A typed client (no discovery Accept) keeps the Status, with a reason for its code.
    let resp = support::client::get(&ours.url("/api")).await;
    let message = support::status_message(&resp, 503, "ServiceUnavailable");
    assert!(message.contains("connection refused"), "{message}");
}

/// All groups, for the bookkeeping tests.
fn all_groups() -> Vec<Group> {
    let mut g = vec![
        cases::default_flags(),
        cases::www(),
        cases::www_ranges(),
        cases::www_nested(),
        cases::unix_socket(),
        cases::impersonation(),
    ];
    g.extend(cases::filter_groups());
    g.extend(cases::prefix_groups());
    g.extend(cases::lifecycle_groups());
    g
}

#[test]
fn every_difference_is_shown_by_a_case_or_says_why_not() {
    let groups = all_groups();
    let cases: Vec<&Case> = groups.iter().flat_map(Group::cases).collect();
    eprintln!("{} cases in {} groups", cases.len(), groups.len());
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut names: Vec<&str> = DIFFERENCES.iter().map(|(n, _)| *n).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), DIFFERENCES.len(), "duplicate difference names");
    for (name, _) in NOT_SIDE_BY_SIDE {
        difference(name);
    }
    for case in &cases {
        if let Some((name, _)) = &case.diff {
            difference(name);
        }
    }
    for (name, _) in DIFFERENCES.iter().chain(KNOWN_GAPS) {
        let shown = cases
            .iter()
            .any(|c| c.diff.as_ref().is_some_and(|(n, _)| n == name));
        let excused = NOT_SIDE_BY_SIDE.iter().any(|(n, _)| n == name);
        assert!(
            shown != excused,
            "difference {name:?}: shown by a case: {shown}, listed as not side by side: {excused}"
        );
    }
    let mut seen = std::collections::HashSet::new();
    for g in &groups {
        for c in g.cases() {
            assert!(
                seen.insert((g.name, c.name.as_str())),
                "duplicate case {}/{}",
                g.name,
                c.name
            );
        }
    }
}

/// The README's "Differences from kubectl proxy" items, each joined into one line.
fn readme_differences() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let start = readme
        .find("## Differences from kubectl proxy")
        .expect("README has a \"Differences from kubectl proxy\" section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut items: Vec<String> = Vec::new();
    for line in section.lines().skip(1) {
        let trimmed = line.trim();
        let numbered = trimmed
            .split_once(". ")
            .filter(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if let Some((_, text)) = numbered {
            items.push(text.to_owned());
        } else if !trimmed.is_empty()
            && line.starts_with(' ')
            && let Some(last) = items.last_mut()
        {
            last.push(' ');
            last.push_str(trimmed);
        }
    }
    items
}

#[test]
fn the_readme_lists_exactly_the_differences() {
    let readme = readme_differences();
    let ours: Vec<String> = DIFFERENCES
        .iter()
        .map(|(_, t)| t.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        readme, ours,
        "the README's differences section and DIFFERENCES in tests/it/compat.rs disagree"
    );
}
