//! The case tables, one function per flag set (or a few related flag sets).
//!
//! `Case::same(name, request, kubectl's outcome)` asserts both proxies agree;
//! `Case::differs(…, difference, check)` names an entry of `DIFFERENCES` and checks our
//! side (given kubectl's outcome and ours).

use super::harness::{Outcome, Req};
use super::{Case, Group, Kubeconfig, ROTATED_TOKEN, Step, TOKEN, Want};

const P: &str = "/api/v1/namespaces/default/pods";

fn get(target: &str) -> Req {
    Req::new("GET", target)
}

fn p(rest: &str) -> String {
    format!("{P}{rest}")
}

fn step(case: Case) -> Step {
    Step::Case(Box::new(case))
}

fn cases(list: Vec<Case>) -> Vec<Step> {
    list.into_iter().map(|c| Step::Case(Box::new(c))).collect()
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

/// Our side reached the API server and it saw `uri`.
fn ours_reached(o: &Outcome, uri: &str) -> Result<(), String> {
    let seen = o.seen.as_ref().ok_or("ours did not reach the API server")?;
    ensure(seen.uri == uri, || {
        format!("ours forwarded {:?}, want {uri:?}", seen.uri)
    })
}

/// kubectl's filter 403, exactly.
fn forbidden(o: &Outcome) -> Result<(), String> {
    ensure(
        o.status == 403 && o.body == "Forbidden\n" && o.seen.is_none(),
        || {
            format!(
                "want kubectl's 403 Forbidden, got {} {:?}",
                o.status, o.body
            )
        },
    )
}

/// A Kubernetes Status object with `code`.
fn status_json(o: &Outcome, code: u16) -> Result<(), String> {
    ensure(o.status == code, || {
        format!("status {}, want {code}", o.status)
    })?;
    ensure(o.header("content-type") == Some("application/json"), || {
        format!("content-type {:?}", o.header("content-type"))
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&o.body).map_err(|e| format!("not JSON ({e}): {:?}", o.body))?;
    ensure(
        v["kind"] == "Status" && v["code"] == code && v["status"] == "Failure",
        || format!("not a failure Status with code {code}: {v}"),
    )
}

/// kubectl's `500 text/plain` for its own failures.
fn kubectl_500(k: &Outcome) -> Result<(), String> {
    ensure(
        k.status == 500
            && k.header("content-type")
                .is_some_and(|c| c.starts_with("text/plain")),
        || {
            format!(
                "kubectl: want 500 text/plain, got {} {:?}",
                k.status,
                k.header("content-type")
            )
        },
    )
}

/// The default flags: Host checks, the default filter and its bypass attempts, path
/// cleaning, methods, header forwarding, credentials and upgrades.
pub fn default_flags() -> Group {
    // Long, but within the header-list limit of the fake API server's HTTP/2 (16 KiB),
    // which kubectl speaks to it.
    let long = format!("/echo/{}", "a".repeat(8000));
    let huge = format!("/echo/{}", "b".repeat(2 * 1024 * 1024));
    let list = vec![
        // --- Host header against the default --accept-hosts.
        Case::same("host 127.0.0.1:PORT", get("/echo/host"), Want::Reach),
        Case::same(
            "host localhost",
            get("/echo/host").host("localhost"),
            Want::Reach,
        ),
        Case::same(
            "host localhost:8001",
            get("/echo/host").host("localhost:8001"),
            Want::Reach,
        ),
        Case::same(
            "host 127.0.0.1",
            get("/echo/host").host("127.0.0.1"),
            Want::Reach,
        ),
        Case::same(
            "host [::1] without port",
            get("/echo/host").host("[::1]"),
            Want::Reach,
        ),
        Case::differs(
            "host [::1]:8001",
            get("/echo/host").host("[::1]:8001"),
            Want::Made(403),
            "ipv6-host",
            |k, o| {
                forbidden(k)?;
                ours_reached(o, "/echo/host")
            },
        ),
        Case::same(
            "host evil.com",
            get("/echo/host").host("evil.com"),
            Want::Made(403),
        ),
        Case::same(
            "host evil.com:8001",
            get("/echo/host").host("evil.com:8001"),
            Want::Made(403),
        ),
        Case::same(
            "host localhost.evil.com",
            get("/echo/host").host("localhost.evil.com"),
            Want::Made(403),
        ),
        Case::same(
            "host 127a0b0c1",
            get("/echo/host").host("127a0b0c1"),
            Want::Made(403),
        ),
        Case::same(
            "host LOCALHOST",
            get("/echo/host").host("LOCALHOST"),
            Want::Made(403),
        ),
        Case::same(
            "host localhost.",
            get("/echo/host").host("localhost."),
            Want::Made(403),
        ),
        Case::same(
            "host localhost: (empty port)",
            get("/echo/host").host("localhost:"),
            Want::Reach,
        ),
        Case::same("host empty", get("/echo/host").host(""), Want::Made(403)),
        Case::same(
            "host missing, HTTP/1.0",
            get("/echo/host").no_host().http10(),
            Want::Made(403),
        ),
        Case::same(
            "host missing, HTTP/1.1",
            get("/echo/host").no_host(),
            Want::Made(400),
        ),
        Case::same(
            "host with a slash",
            get("/echo/host").host("localhost/x"),
            Want::Made(400),
        ),
        Case::same(
            "host with a space",
            get("/echo/host").host("local host"),
            Want::Made(400),
        ),
        Case::same(
            "host with userinfo",
            get("/echo/host").host("user@localhost"),
            Want::Made(400),
        ),
        Case::same(
            "host twice",
            get("/echo/host").header("Host", "evil.com"),
            Want::Made(400),
        ),
        // --- Absolute-form targets: the target's authority is the host judged; the API
        // server always gets the origin form.
        Case::same(
            "absolute-form to evil.com",
            get("http://evil.com/echo/abs").host("localhost"),
            Want::Made(403),
        ),
        Case::same(
            "absolute-form to localhost, Host evil.com",
            get("http://localhost:8001/echo/abs?x=1").host("evil.com"),
            Want::Reach,
        )
        .uri("/echo/abs?x=1"),
        Case::same(
            "absolute-form https",
            get("https://127.0.0.1/echo/abs").host("127.0.0.1"),
            Want::Reach,
        )
        .uri("/echo/abs"),
        Case::differs(
            "absolute-form to [::1]:8001",
            get("http://[::1]:8001/echo/abs").host("localhost"),
            Want::Made(403),
            "ipv6-host",
            |k, o| {
                forbidden(k)?;
                ours_reached(o, "/echo/abs")
            },
        ),
        // --- Userinfo in an absolute-form target: refused outright.
        Case::differs(
            "absolute-form with userinfo before evil.com",
            get("http://localhost:8001@evil.com/echo/abs").host("evil.com"),
            Want::Made(403),
            "userinfo",
            |k, o| {
                forbidden(k)?;
                ensure(o.status == 400 && o.seen.is_none(), || {
                    format!("ours: {} {:?}", o.status, o.body)
                })
            },
        ),
        Case::differs(
            "absolute-form with userinfo before localhost",
            get("http://evil.com@localhost:8001/echo/abs").host("localhost"),
            Want::Reach,
            "userinfo",
            |_, o| {
                ensure(o.status == 400 && o.seen.is_none(), || {
                    format!("ours: {} {:?}", o.status, o.body)
                })
            },
        ),
        // --- The default --reject-paths and ways around it.
        Case::differs(
            "newline before exec",
            get(&p("/x%0a/exec")),
            Want::Reach,
            "control-characters",
            |_, o| status_json(o, 400),
        ),
        Case::differs(
            "node proxy exec",
            get("/api/v1/nodes/node-1/proxy/exec/default/p/c?command=id"),
            Want::Reach,
            "node-proxy-exec",
            |_, o| forbidden(o),
        ),
        Case::differs(
            "node proxy portForward",
            get("/api/v1/nodes/node-1/proxy/portForward/default/p"),
            Want::Reach,
            "node-proxy-exec",
            |_, o| forbidden(o),
        ),
        Case::same(
            "node proxy metrics",
            get("/api/v1/nodes/node-1/proxy/metrics"),
            Want::Reach,
        ),
        Case::same("exec", get(&p("/foo/exec")), Want::Made(403)),
        Case::same("attach", get(&p("/foo/attach")), Want::Made(403)),
        Case::same(
            "POST exec",
            Req::new("POST", p("/foo/exec")),
            Want::Made(403),
        ),
        Case::same(
            "exec, trailing slash",
            get(&p("/foo/exec/")),
            Want::Made(403),
        ),
        Case::same("execfoo", get(&p("/execfoo")), Want::Reach).uri(&p("/execfoo")),
        Case::same("attachfoo", get(&p("/attachfoo")), Want::Reach),
        Case::same("exec as %2F", get(&p("/foo%2Fexec")), Want::Made(403)),
        Case::same("exec with %65", get(&p("/foo/ex%65c")), Want::Made(403)),
        Case::same(
            "exec under %61pi",
            get("/%61pi/v1/namespaces/default/pods/foo/exec"),
            Want::Made(403),
        ),
        Case::same(
            "exec after %2e%2e",
            get(&p("/foo/%2e%2e/bar/exec")),
            Want::Made(403),
        ),
        Case::same("EXEC upper case", get(&p("/foo/EXEC")), Want::Reach).uri(&p("/foo/EXEC")),
        Case::same(
            "exec with a query",
            get(&p("/foo/exec?command=sh")),
            Want::Made(403),
        ),
        Case::same(
            "exec with a path parameter",
            get(&p("/foo;x=1/exec;y=2")),
            Want::Made(403),
        ),
        Case::same(
            "exec hidden in the query",
            get(&format!("/echo/q?x={P}/foo/exec")),
            Want::Reach,
        ),
        Case::same(
            "GeT exec (mixed-case method)",
            Req::new("GeT", p("/foo/exec")),
            Want::Made(403),
        ),
        // --- Unclean paths: kubectl's mux answers 301 before the filter.
        Case::same(
            "double slash before exec",
            get(&format!("/{P}/foo/exec")),
            Want::Made(301),
        ),
        Case::same("dot segment", get(&p("/foo/./exec")), Want::Made(301)),
        Case::same("dot-dot segment", get("/x/../api/v1/pods"), Want::Made(301)),
        Case::same(
            "dot-dot above the root",
            get("/../../api/v1/pods"),
            Want::Made(301),
        ),
        Case::same("trailing dot", get("/api/v1/."), Want::Made(301)),
        Case::same(
            "unclean, query kept",
            get("/api//v1/pods?watch=1&x=%2F"),
            Want::Made(301),
        ),
        Case::same(
            "unclean HEAD",
            Req::new("HEAD", "/api//v1/pods"),
            Want::Made(301),
        ),
        Case::same(
            "unclean POST",
            Req::new("POST", "/api//v1/pods"),
            Want::Made(301),
        ),
        Case::differs(
            "unclean with %2F",
            get("/api//v1/pods%2Fexec?a=%2F"),
            Want::Made(301),
            "redirect-escapes",
            |k, o| {
                ensure(
                    k.header("location") == Some("/api/v1/pods%252Fexec?a=%2F"),
                    || format!("kubectl: Location {:?}", k.header("location")),
                )?;
                ensure(
                    o.status == 301 && o.header("location") == Some("/api/v1/pods%2Fexec?a=%2F"),
                    || format!("ours: {} Location {:?}", o.status, o.header("location")),
                )?;
                ensure(
                    o.body == "<a href=\"/api/v1/pods%2Fexec?a=%2F\">Moved Permanently</a>.\n\n",
                    || format!("ours: body {:?}", o.body),
                )
            },
        ),
        Case::differs(
            "unclean with a backslash",
            get("/./\\evil.example/x"),
            Want::Made(301),
            "redirect-escapes",
            |k, o| {
                ensure(k.header("location") == Some("/%255Cevil.example/x"), || {
                    format!("kubectl: Location {:?}", k.header("location"))
                })?;
                ensure(
                    o.status == 301 && o.header("location") == Some("/%5Cevil.example/x"),
                    || format!("ours: {} Location {:?}", o.status, o.header("location")),
                )
            },
        ),
        Case::same(
            "malformed escape %zz",
            get("/api/v1/na%zzme"),
            Want::Made(400),
        ),
        Case::same("truncated escape", get("/api/v1/x%2"), Want::Made(400)),
        // --- Targets forwarded byte for byte.
        Case::same("root", get("/"), Want::Reach).uri("/"),
        Case::same("trailing slash kept", get("/api/v1/pods/"), Want::Reach).uri("/api/v1/pods/"),
        Case::same("escapes kept", get("/echo/a%20b%2Fc%25d"), Want::Reach)
            .uri("/echo/a%20b%2Fc%25d"),
        Case::same(
            "query kept",
            get("/echo/q?a=%2F&b=c+d&e&=x&a=2"),
            Want::Reach,
        )
        .uri("/echo/q?a=%2F&b=c+d&e&=x&a=2"),
        Case::same("empty query", get("/echo/q?"), Want::Reach),
        Case::same("escaped non-UTF-8", get("/echo/%ff%C3%A9"), Want::Reach).uri("/echo/%ff%C3%A9"),
        Case::differs(
            "escaped NUL",
            get("/echo/%00%ff%C3%A9"),
            Want::Reach,
            "control-characters",
            |_, o| status_json(o, 400),
        ),
        Case::same("raw UTF-8 in the path", get("/echo/caf\u{e9}"), Want::Reach)
            .uri("/echo/caf%C3%A9"),
        Case::same(
            "characters no URI may hold",
            get("/echo/a|b{c}^d\"e\\f"),
            Want::Reach,
        )
        .uri("/echo/a%7Cb%7Bc%7D%5Ed%22e%5Cf"),
        Case::same(
            "raw UTF-8 and | in the query",
            get("/echo/q?q=caf\u{e9}|{}"),
            Want::Reach,
        )
        .uri("/echo/q?q=caf\u{e9}|{}"),
        Case::differs(
            "raw UTF-8 beside an escape",
            get("/echo/caf\u{e9}%2Fx"),
            Want::Reach,
            "escapes-kept",
            |k, o| {
                ensure(k.seen().uri == "/echo/caf%C3%A9/x", || {
                    format!("kubectl forwarded {:?}", k.seen().uri)
                })?;
                ours_reached(o, "/echo/caf%C3%A9%2Fx")
            },
        ),
        Case::gap(
            "< and > in the path",
            get("/echo/a<b>"),
            Want::Reach,
            "uri-chars",
            |k, o| {
                ensure(k.seen().uri == "/echo/a%3Cb%3E", || {
                    format!("kubectl forwarded {:?}", k.seen().uri)
                })?;
                ensure(
                    o.status == 400 && o.seen.is_none() && o.body.is_empty(),
                    || format!("ours: {} {:?}", o.status, o.body),
                )
            },
        ),
        Case::same("list pods", get(P), Want::Reach),
        Case::same("get a pod", get(&p("/pod-1")), Want::Reach),
        Case::same("8000-byte path", get(&long), Want::Reach).uri(&long),
        Case::gap(
            "2 MiB path",
            get(&huge),
            Want::Made(431),
            "oversized-head",
            |k, o| {
                ensure(k.body == "431 Request Header Fields Too Large", || {
                    format!("kubectl: {:?}", k.body)
                })?;
                ensure(o.status == 431 && o.body.is_empty(), || {
                    format!("ours: {} {:?}", o.status, o.body)
                })
            },
        ),
        // --- Methods.
        Case::same("lower-case get", Req::new("get", "/echo/m"), Want::Reach),
        Case::same(
            "POST with a body",
            Req::new("POST", "/echo/m")
                .header("Content-Type", "application/json")
                .body(b"{\"a\":1}"),
            Want::Reach,
        ),
        Case::same(
            "POST chunked",
            Req::new("POST", "/echo/m")
                .header("Transfer-Encoding", "chunked")
                .body(b"chunked body"),
            Want::Reach,
        ),
        Case::same(
            "PUT",
            Req::new("PUT", "/echo/m").body(b"put body"),
            Want::Reach,
        ),
        Case::same(
            "POST with Expect: 100-continue",
            Req::new("POST", "/echo/m")
                .header("Expect", "100-continue")
                .body(b"expected"),
            Want::Reach,
        ),
        Case::same(
            "PATCH",
            Req::new("PATCH", "/echo/m")
                .header("Content-Type", "application/merge-patch+json")
                .body(b"{\"metadata\":{}}"),
            Want::Reach,
        ),
        Case::same("DELETE", Req::new("DELETE", "/echo/m"), Want::Reach),
        Case::same(
            "HEAD",
            Req::new("HEAD", "/api/v1/namespaces/default/pods/pod-0"),
            Want::Reach,
        ),
        Case::same("OPTIONS", Req::new("OPTIONS", "/echo/m"), Want::Reach),
        Case::same(
            "extension method",
            Req::new("PURGE", "/echo/m"),
            Want::Reach,
        ),
        Case::differs(
            "CONNECT",
            Req::new("CONNECT", "evil.com:443").host("evil.com:443"),
            Want::Made(301),
            "connect-refused",
            |k, o| {
                ensure(k.header("location") == Some("/"), || {
                    format!("kubectl: {:?}", k.headers)
                })?;
                ensure(o.seen.is_none(), || "ours reached the API server".into())?;
                status_json(o, 400)
            },
        ),
        Case::same("OPTIONS *", Req::new("OPTIONS", "*"), Want::Made(200)),
        // --- Headers.
        Case::same(
            "hop-by-hop headers dropped",
            get("/echo/h")
                .header("Connection", "close, X-Drop-Me")
                .header("X-Drop-Me", "1")
                .header("Keep-Alive", "timeout=5")
                .header("Proxy-Connection", "keep-alive")
                .header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
                .header("TE", "trailers")
                .header("X-Keep-Me", "1"),
            Want::Reach,
        ),
        Case::same(
            "end-to-end headers kept",
            get("/echo/h")
                .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
                .header("Cookie", "a=b")
                .header("X-Multi", "1")
                .header("X-Multi", "2")
                .header("X-Forwarded-Host", "example.com")
                .header("X-Forwarded-Proto", "https"),
            Want::Reach,
        ),
        Case::same(
            "client's User-Agent kept",
            get("/echo/h").header("User-Agent", "compat/1.0"),
            Want::Reach,
        ),
        Case::same(
            "X-Forwarded-For appended",
            get("/echo/h").header("X-Forwarded-For", "10.0.0.1"),
            Want::Reach,
        ),
        Case::same(
            "two X-Forwarded-For headers folded",
            get("/echo/h")
                .header("X-Forwarded-For", "10.0.0.1")
                .header("X-Forwarded-For", "10.0.0.2"),
            Want::Reach,
        ),
        Case::same(
            "client asks for gzip",
            get("/echo/h").header("Accept-Encoding", "gzip"),
            Want::Reach,
        ),
        Case::differs(
            "client asks for no encoding",
            get("/echo/gz"),
            Want::Reach,
            "no-gzip-added",
            |k, o| {
                ensure(k.seen().header("accept-encoding") == Some("gzip"), || {
                    format!("kubectl sent {:?}", k.seen().header("accept-encoding"))
                })?;
                let seen = o.seen.as_ref().ok_or("ours did not reach the API server")?;
                ensure(seen.header("accept-encoding").is_none(), || {
                    format!("ours sent {:?}", seen.header("accept-encoding"))
                })
            },
        ),
        Case::same(
            "caller's own bearer token",
            get("/echo/auth").header("Authorization", "Bearer callers-own"),
            Want::Reach,
        )
        .check(|o| {
            ensure(o.seen().token.as_deref() == Some("callers-own"), || {
                format!("{:?}", o.seen().token)
            })
        }),
        Case::same(
            "caller's own valid token",
            get(P).header("Authorization", &format!("Bearer {ROTATED_TOKEN}")),
            Want::Reach,
        ),
        Case::same(
            "caller's Basic auth",
            get("/echo/auth").header("Authorization", "Basic dTpw"),
            Want::Reach,
        ),
        Case::same("proxy's token", get("/echo/auth"), Want::Reach).check(|o| {
            ensure(o.seen().token.as_deref() == Some(TOKEN), || {
                format!("{:?}", o.seen().token)
            })
        }),
        Case::same(
            "caller's Impersonate-User",
            get("/echo/imp").header("Impersonate-User", "bob"),
            Want::Reach,
        ),
        Case::same(
            "API server's 404 relayed",
            get("/no/such/thing"),
            Want::Reach,
        ),
        Case::same(
            "API server's redirect relayed",
            get("/redirect"),
            Want::Reach,
        ),
        // --- Upgrades.
        Case::same(
            "upgrade: exec refused",
            get(&p("/foo/exec?command=sh")).upgrade("SPDY/3.1"),
            Want::Made(403),
        ),
        Case::same(
            "upgrade: attach refused",
            get(&p("/foo/attach")).upgrade("SPDY/3.1"),
            Want::Made(403),
        ),
        Case::same(
            "upgrade: port-forward (SPDY)",
            get(&p("/foo/portforward?ports=80")).upgrade("SPDY/3.1"),
            Want::Tunnel,
        ),
        Case::same(
            "upgrade: port-forward (WebSocket)",
            get(&p("/foo/portforward?ports=80"))
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("Sec-WebSocket-Version", "13")
                .header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
                .upgrade("websocket"),
            Want::Tunnel,
        ),
        Case::same(
            "upgrade: refused by the API server",
            get("/upgrade-refused").upgrade("SPDY/3.1"),
            Want::Reach,
        ),
        Case::same(
            "upgrade: caller's bad token",
            get(&p("/foo/portforward"))
                .header("Authorization", "Bearer nope")
                .upgrade("SPDY/3.1"),
            Want::Reach,
        ),
        Case::differs(
            "upgrade: hop-by-hop headers",
            get("/upgrade/hop")
                .header("Keep-Alive", "timeout=5")
                .header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
                .header("X-Keep-Me", "1")
                .upgrade("SPDY/3.1"),
            Want::Tunnel,
            "upgrade-hop-by-hop",
            |k, o| {
                let (ks, os) = (
                    k.seen(),
                    o.seen.as_ref().ok_or("ours did not reach the API server")?,
                );
                ensure(
                    ks.header("keep-alive").is_some() && ks.header("proxy-authorization").is_some(),
                    || format!("kubectl: {:?}", ks.headers),
                )?;
                ensure(
                    o.status == 101
                        && o.tunnel_echoed == Some(true)
                        && os.header("keep-alive").is_none()
                        && os.header("proxy-authorization").is_none()
                        && os.header("x-keep-me") == Some("1"),
                    || format!("ours: {} {:?}", o.status, os.headers),
                )
            },
        ),
        Case::differs(
            "upgrade: lower-case tokens",
            get("/upgrade/lower")
                .header("connection", "keep-alive, upgrade")
                .header("upgrade", "spdy/3.1"),
            Want::Reach,
            "upgrade-hop-by-hop",
            |k, o| {
                ensure(
                    k.seen().header("connection") == Some("keep-alive, upgrade"),
                    || format!("kubectl: {:?}", k.seen().headers),
                )?;
                let os = o.seen.as_ref().ok_or("ours did not reach the API server")?;
                ensure(
                    o.status == 101
                        && os.header("connection") == Some("Upgrade")
                        && os.header("upgrade") == Some("spdy/3.1"),
                    || format!("ours: {} {:?}", o.status, os.headers),
                )
            },
        ),
        Case::differs(
            "upgrade answered 200",
            get("/echo/not-an-upgrade").upgrade("SPDY/3.1"),
            Want::Reach,
            "status-json",
            |k, o| {
                kubectl_500(k)?;
                status_json(o, 502)
            },
        ),
    ];
    Group::new("default", &[], cases(list))
}

/// `--accept-hosts`, `--accept-paths`, `--reject-paths`, `--reject-methods`,
/// `--disable-filter`, each with its own pair of proxies.
pub fn filter_groups() -> Vec<Group> {
    let custom = Group::new(
        "custom filter",
        &[
            r"--accept-hosts=^example\.com$,^localhost$",
            "--accept-paths=^/api/v1/namespaces/,^/echo",
            "--reject-paths=/secrets,^/echo/private",
            "--reject-methods=^DELETE$,PATCH",
        ],
        cases(vec![
            Case::same(
                "accepted host with port",
                get("/echo/a").host("example.com:9999"),
                Want::Reach,
            ),
            Case::same("localhost", get("/echo/a").host("localhost"), Want::Reach),
            Case::same(
                "127.0.0.1 not accepted any more",
                get("/echo/a"),
                Want::Made(403),
            ),
            Case::same(
                "sub.example.com",
                get("/echo/a").host("sub.example.com"),
                Want::Made(403),
            ),
            Case::same(
                "path outside accept-paths",
                get("/api/v1/pods").host("localhost"),
                Want::Made(403),
            ),
            Case::same("namespaced path", get(P).host("localhost"), Want::Reach),
            Case::same(
                "rejected path",
                get("/api/v1/namespaces/default/secrets").host("localhost"),
                Want::Made(403),
            ),
            Case::same(
                "rejected path, encoded",
                get("/api/v1/namespaces/default/secret%73/x").host("localhost"),
                Want::Made(403),
            ),
            Case::same(
                "rejected prefix",
                get("/echo/privatex").host("localhost"),
                Want::Made(403),
            ),
            Case::same(
                "anchored rejection",
                get("/echo/notprivate").host("localhost"),
                Want::Reach,
            ),
            Case::same(
                "DELETE",
                Req::new("DELETE", "/echo/a").host("localhost"),
                Want::Made(403),
            ),
            Case::same(
                "delete (lower case)",
                Req::new("delete", "/echo/a").host("localhost"),
                Want::Reach,
            ),
            Case::same(
                "PATCH",
                Req::new("PATCH", "/echo/a").host("localhost").body(b"{}"),
                Want::Made(403),
            ),
            Case::same(
                "XPATCHX (unanchored)",
                Req::new("XPATCHX", "/echo/a").host("localhost"),
                Want::Made(403),
            ),
            Case::same(
                "exec allowed now",
                get(&p("/foo/exec")).host("localhost"),
                Want::Reach,
            ),
            Case::same(
                "metrics",
                get("/metrics").host("localhost"),
                Want::Made(403),
            ),
        ]),
    );
    let methods = Group::new(
        "reject methods",
        &["--reject-methods=POST,PUT,PATCH"],
        cases(vec![
            Case::same("POST", Req::new("POST", P).body(b"{}"), Want::Made(403)),
            Case::same(
                "PUT",
                Req::new("PUT", p("/pod-0")).body(b"{}"),
                Want::Made(403),
            ),
            Case::same(
                "PATCH",
                Req::new("PATCH", p("/pod-0")).body(b"{}"),
                Want::Made(403),
            ),
            Case::same(
                "XPOST (unanchored)",
                Req::new("XPOST", "/echo/m"),
                Want::Made(403),
            ),
            Case::same(
                "post (lower case)",
                Req::new("post", "/echo/m").body(b"x"),
                Want::Reach,
            ),
            Case::same("GET", get(P), Want::Reach),
            Case::same("DELETE", Req::new("DELETE", "/echo/m"), Want::Reach),
            Case::same(
                "upgrade (a GET)",
                get(&p("/foo/portforward")).upgrade("SPDY/3.1"),
                Want::Tunnel,
            ),
        ]),
    );
    let no_reject = Group::new(
        "empty reject-paths",
        &["--reject-paths="],
        cases(vec![
            Case::same(
                "POST exec",
                Req::new("POST", p("/somepod/exec")),
                Want::Reach,
            ),
            Case::same(
                "upgrade: exec",
                get(&p("/foo/exec?command=sh&stdout=1")).upgrade("SPDY/3.1"),
                Want::Tunnel,
            ),
            Case::same(
                "upgrade: attach over WebSocket",
                get(&p("/foo/attach?stdin=1"))
                    .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
                    .header("Sec-WebSocket-Version", "13")
                    .upgrade("websocket"),
                Want::Tunnel,
            ),
            Case::same(
                "evil host still refused",
                get("/echo/a").host("evil.com"),
                Want::Made(403),
            ),
        ]),
    );
    let no_accept = Group::new(
        "empty accept-paths",
        &["--accept-paths="],
        cases(vec![
            Case::same("nothing accepted", get("/echo/a"), Want::Made(403)),
            Case::same("not even the root", get("/"), Want::Made(403)),
        ]),
    );
    let any_host = Group::new(
        "accept-hosts with an empty part",
        &["--accept-hosts=^nope$,"],
        cases(vec![
            Case::same("any host", get("/echo/a").host("evil.com"), Want::Reach),
            Case::same(
                "[::1]:8001 too",
                get("/echo/a").host("[::1]:8001"),
                Want::Reach,
            ),
        ]),
    );
    let disabled = Group::new(
        "disable-filter",
        &["--disable-filter"],
        cases(vec![
            Case::same("evil host", get("/echo/a").host("evil.com"), Want::Reach),
            Case::same("[::1]:8001", get("/echo/a").host("[::1]:8001"), Want::Reach),
            Case::same("exec", get(&p("/foo/exec")), Want::Reach),
            Case::same(
                "upgrade: exec",
                get(&p("/foo/exec")).upgrade("SPDY/3.1"),
                Want::Tunnel,
            ),
            Case::same("unclean still redirected", get("/api//v1"), Want::Made(301)),
            Case::same(
                "malformed escape still 400",
                get("/api/%zz"),
                Want::Made(400),
            ),
            Case::same(
                "absolute-form elsewhere",
                get("http://evil.com/echo/abs").host("evil.com"),
                Want::Reach,
            )
            .uri("/echo/abs"),
            Case::same(
                "host missing, HTTP/1.1",
                get("/echo/host").no_host(),
                Want::Made(400),
            ),
            Case::same(
                "host missing, HTTP/1.0",
                get("/echo/host").no_host().http10(),
                Want::Reach,
            ),
            Case::same(
                "host twice",
                get("/echo/host").header("Host", "evil.com"),
                Want::Made(400),
            ),
        ]),
    );
    let no_gzip = Group::new(
        "disable-compression",
        &["--disable-compression"],
        cases(vec![
            Case::same(
                "client sends no Accept-Encoding",
                get("/echo/gz"),
                Want::Reach,
            )
            .check(|o| {
                ensure(o.seen().header("accept-encoding").is_none(), || {
                    format!("{:?}", o.seen().headers)
                })
            }),
            Case::differs(
                "client asks for gzip",
                get("/echo/gz").header("Accept-Encoding", "gzip"),
                Want::Reach,
                "disable-compression",
                |k, o| {
                    ensure(k.seen().header("accept-encoding") == Some("gzip"), || {
                        format!("kubectl: {:?}", k.seen().headers)
                    })?;
                    let seen = o.seen.as_ref().ok_or("ours did not reach the API server")?;
                    ensure(seen.header("accept-encoding").is_none(), || {
                        format!("ours: {:?}", seen.headers)
                    })
                },
            ),
        ]),
    );
    vec![
        custom, methods, no_reject, no_accept, any_host, disabled, no_gzip,
    ]
}

/// kubectl's `--api-prefix` table, and `--append-server-path` with a server URL that
/// has a path (Rancher-style `/k8s/clusters/c1`).
pub fn prefix_groups() -> Vec<Group> {
    let api = Group::new(
        "api-prefix /api",
        &["--api-prefix=/api"],
        cases(vec![
            Case::same("/metrics", get("/metrics"), Want::Made(404)),
            Case::same("/api/v1/pods/", get("/api/v1/pods/"), Want::Reach).uri("/api/v1/pods/"),
            Case::same("/api/ itself", get("/api/"), Want::Reach).uri("/api/"),
            Case::same("/api without slash", get("/api?x=1"), Want::Made(301)),
            Case::same("/apis is outside", get("/apis/apps/v1"), Want::Made(404)),
            Case::same(
                "exec under the prefix",
                get(&p("/foo/exec")),
                Want::Made(403),
            ),
        ]),
    );
    let custom = Group::new(
        "api-prefix /custom/",
        &["--api-prefix=/custom/"],
        cases(vec![
            Case::same("/metrics", get("/metrics"), Want::Made(404)),
            Case::same("/api/v1/pods/", get("/api/v1/pods/"), Want::Made(404)),
            Case::same(
                "/custom/api/v1/pods/",
                get("/custom/api/v1/pods/"),
                Want::Reach,
            )
            .uri("/api/v1/pods/"),
            Case::same("/custom/ itself", get("/custom/"), Want::Reach).uri("/"),
            Case::same("/custom without slash", get("/custom"), Want::Made(301)),
            Case::same("/customer", get("/customer"), Want::Made(404)),
            Case::same(
                "query below the prefix",
                get("/custom/echo/x?q=%2F"),
                Want::Reach,
            )
            .uri("/echo/x?q=%2F"),
            Case::same(
                "exec below the prefix",
                get("/custom/api/v1/namespaces/d/pods/x/exec"),
                Want::Made(403),
            ),
            Case::same(
                "unclean below the prefix",
                get("/custom//api"),
                Want::Made(301),
            ),
            Case::differs(
                "%2e%2e below the prefix",
                get("/custom/%2e%2e/echo/x"),
                Want::Reach,
                "dot-segments-judged",
                |k, o| {
                    ensure(k.seen().uri == "/../echo/x", || {
                        format!("kubectl forwarded {:?}", k.seen().uri)
                    })?;
                    forbidden(o)
                },
            ),
            Case::differs(
                "%2F below the prefix",
                get("/custom/echo/a%2Fb%20c"),
                Want::Reach,
                "escapes-kept",
                |k, o| {
                    ensure(k.seen().uri == "/echo/a/b%20c", || {
                        format!("kubectl forwarded {:?}", k.seen().uri)
                    })?;
                    ours_reached(o, "/echo/a%2Fb%20c")
                },
            ),
            Case::same(
                "upgrade below the prefix",
                get("/custom/api/v1/namespaces/default/pods/x/portforward").upgrade("SPDY/3.1"),
                Want::Tunnel,
            ),
        ]),
    );
    let server_path = Kubeconfig::Token {
        server_path: "/k8s/clusters/c1",
    };
    let append = Group::new(
        "append-server-path",
        &["--api-prefix=/custom/", "--append-server-path"],
        cases(vec![
            Case::same(
                "/custom/api/v1/pods",
                get("/custom/api/v1/pods"),
                Want::Reach,
            )
            .uri("/k8s/clusters/c1/api/v1/pods"),
            Case::same("query", get("/custom/echo/a?x=%2F"), Want::Reach)
                .uri("/k8s/clusters/c1/echo/a?x=%2F"),
            Case::differs(
                "escapes in the path",
                get("/custom/echo/a%2Fb?x=%2F"),
                Want::Reach,
                "escapes-kept",
                |k, o| {
                    ensure(k.seen().uri == "/k8s/clusters/c1/echo/a/b?x=%2F", || {
                        format!("kubectl forwarded {:?}", k.seen().uri)
                    })?;
                    ours_reached(o, "/k8s/clusters/c1/echo/a%2Fb?x=%2F")
                },
            ),
            Case::same("/custom/ itself", get("/custom/"), Want::Reach),
            Case::same("outside the prefix", get("/api/v1/pods"), Want::Made(404)),
            Case::same(
                "exec",
                get("/custom/api/v1/namespaces/d/pods/x/exec"),
                Want::Made(403),
            ),
            Case::same(
                "upgrade",
                get("/custom/upgrade/x").upgrade("SPDY/3.1"),
                Want::Reach,
            )
            .uri("/k8s/clusters/c1/upgrade/x"),
        ]),
    )
    .kubeconfig(server_path);
    let append_root = Group::new(
        "append-server-path, default prefix",
        &["--append-server-path"],
        cases(vec![
            Case::same("/api/v1/pods", get("/api/v1/pods"), Want::Reach)
                .uri("/k8s/clusters/c1/api/v1/pods"),
            Case::same("/", get("/"), Want::Reach),
            Case::same("escapes kept", get("/echo/a%2Fb%20c?x=%2F"), Want::Reach)
                .uri("/k8s/clusters/c1/echo/a%2Fb%20c?x=%2F"),
        ]),
    )
    .kubeconfig(server_path);
    let no_append = Group::new(
        "server path without append-server-path",
        &[],
        cases(vec![
            Case::same("/api/v1/pods", get("/api/v1/pods"), Want::Reach).uri("/api/v1/pods"),
            Case::same(
                "upgrade",
                get("/upgrade/x").upgrade("SPDY/3.1"),
                Want::Tunnel,
            ),
        ]),
    )
    .kubeconfig(server_path);
    vec![api, custom, append, append_root, no_append]
}

/// `--www` (default `--www-prefix=/static/`): Go's file server under the prefix, never
/// filtered. Files are streamed, never served from outside the directory; `Range` (one
/// range: 206 with `Content-Range`; several: `multipart/byteranges`), `If-Range`,
/// `If-Match`/`If-Unmodified-Since` (412), `If-None-Match`/`If-Modified-Since` (304) are
/// answered as Go's `http.FileServer` answers them (the README's summary points here).
pub fn www() -> Group {
    let list = vec![
        Case::same("a file", get("/static/hello.txt"), Want::Made(200)),
        Case::same(
            "HEAD a file",
            Req::new("HEAD", "/static/hello.txt"),
            Want::Made(200),
        ),
        Case::same("CSS", get("/static/style.css"), Want::Made(200)),
        Case::same(
            "JSON in a subdirectory",
            get("/static/sub/b.json"),
            Want::Made(200),
        ),
        Case::same(
            "name with a space",
            get("/static/a%20b.txt"),
            Want::Made(200),
        ),
        Case::same("the index", get("/static/"), Want::Made(200)),
        Case::same(
            "index.html redirected",
            get("/static/index.html"),
            Want::Made(301),
        ),
        Case::same(
            "directory without slash",
            get("/static/sub?x=1"),
            Want::Made(301),
        ),
        Case::same("directory listing", get("/static/sub/"), Want::Made(200)),
        Case::same(
            "empty directory listing",
            get("/static/empty/"),
            Want::Made(200),
        ),
        Case::same(
            "file with a slash",
            get("/static/hello.txt/"),
            Want::Made(301),
        ),
        Case::same("missing file", get("/static/missing.txt"), Want::Made(404)),
        Case::same(
            "symlink inside",
            get("/static/link-in.txt"),
            Want::Made(200),
        ),
        Case::same(
            "not filtered: evil host",
            get("/static/hello.txt").host("evil.com"),
            Want::Made(200),
        ),
        Case::same("the prefix without slash", get("/static"), Want::Made(301)),
        Case::same(
            "literal .. redirected",
            get("/static/../outside.txt"),
            Want::Made(301),
        ),
        Case::same(
            "If-Modified-Since",
            get("/static/hello.txt").header("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT"),
            Want::Made(304),
        ),
        Case::same(
            "listing: If-Modified-Since, whatever If-None-Match says",
            get("/static/sub/")
                .header("If-None-Match", "\"x\"")
                .header("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT"),
            Want::Made(304),
        ),
        Case::same("API still proxied", get(P), Want::Reach),
        Case::same("API filter still on", get(&p("/foo/exec")), Want::Made(403)),
        Case::differs(
            "encoded .. to the root",
            get("/static/%2e%2e/hello.txt"),
            Want::Made(200),
            "www-dotdot",
            |_, o| {
                ensure(o.status == 404 && o.body == "404 page not found\n", || {
                    format!("ours: {} {:?}", o.status, o.body)
                })
            },
        ),
        Case::differs(
            "symlink out of the directory",
            get("/static/link-out.txt"),
            Want::Made(200),
            "www-symlink-out",
            |k, o| {
                ensure(k.body == "outside the www directory\n", || {
                    format!("kubectl: {:?}", k.body)
                })?;
                ensure(o.status == 404 && o.body == "404 page not found\n", || {
                    format!("ours: {} {:?}", o.status, o.body)
                })
            },
        ),
        Case::differs(
            "POST a file",
            Req::new("POST", "/static/hello.txt").body(b"x"),
            Want::Made(200),
            "www-methods",
            |k, o| {
                ensure(k.body == "hello, static world\n", || {
                    format!("kubectl: {:?}", k.body)
                })?;
                ensure(
                    o.status == 405 && o.header("allow") == Some("GET, HEAD"),
                    || format!("ours: {} allow={:?}", o.status, o.header("allow")),
                )
            },
        ),
        Case::differs(
            "unknown extension",
            get("/static/notes.unknownext"),
            Want::Made(200),
            "www-no-sniff",
            |k, o| {
                ensure(
                    k.header("content-type") == Some("text/plain; charset=utf-8"),
                    || format!("kubectl: {:?}", k.header("content-type")),
                )?;
                ensure(
                    o.status == 200
                        && o.header("content-type") == Some("application/octet-stream")
                        && o.body == k.body,
                    || format!("ours: {} {:?}", o.status, o.header("content-type")),
                )
            },
        ),
    ];
    Group::new("www", &["--www={www}"], cases(list))
}

/// `--www`: Go's `Range` and conditional requests (RFC 9110 §13, §14) on a 20-byte file.
pub fn www_ranges() -> Group {
    let file = "/static/hello.txt";
    let range = |r: &str| get(file).header("Range", r);
    let list = vec![
        Case::same("first bytes", range("bytes=0-4"), Want::Made(206)),
        Case::same("a suffix", range("bytes=-6"), Want::Made(206)),
        Case::same("to the end", range("bytes=7-"), Want::Made(206)),
        Case::same(
            "past the end, clamped",
            range("bytes=15-100"),
            Want::Made(206),
        ),
        Case::same(
            "spaces and a sign",
            range("bytes= +1 - 2 ,"),
            Want::Made(206),
        ),
        Case::same(
            "several: multipart",
            range("bytes=0-1, 3-4,-2"),
            Want::Made(206),
        ),
        Case::same("an empty suffix", range("bytes=-0"), Want::Made(206)),
        Case::same(
            "more than the file: ignored",
            range("bytes=0-,0-"),
            Want::Made(200),
        ),
        Case::same("starting past the end", range("bytes=50-"), Want::Made(416)),
        Case::same("malformed", range("bytes=x"), Want::Made(416)),
        Case::same("last before first", range("bytes=4-1"), Want::Made(416)),
        Case::same("another unit", range("items=0-1"), Want::Made(416)),
        Case::same(
            "an empty file ignores it",
            get("/static/empty.txt").header("Range", "bytes=0-1"),
            Want::Made(200),
        ),
        Case::same(
            "HEAD",
            Req::new("HEAD", file).header("Range", "bytes=0-4"),
            Want::Made(206),
        ),
        Case::same(
            "If-Range with an entity tag: the whole file",
            range("bytes=0-4").header("If-Range", "\"v1\""),
            Want::Made(200),
        ),
        Case::same(
            "If-Range with another date: the whole file",
            range("bytes=0-4").header("If-Range", "Fri, 01 Jan 2100 00:00:00 GMT"),
            Want::Made(200),
        ),
        Case::same(
            "If-Match: *",
            get(file).header("If-Match", "*"),
            Want::Made(200),
        ),
        Case::same(
            "If-Match: an entity tag",
            get(file).header("If-Match", "\"v1\""),
            Want::Made(412),
        ),
        Case::same(
            "If-Match: a tag, then *",
            get(file).header("If-Match", "\"v1\", *"),
            Want::Made(200),
        ),
        Case::same(
            "If-Unmodified-Since long ago",
            get(file).header("If-Unmodified-Since", "Mon, 01 Jan 2001 00:00:00 GMT"),
            Want::Made(412),
        ),
        Case::same(
            "If-Unmodified-Since to come",
            get(file).header("If-Unmodified-Since", "Fri, 01 Jan 2100 00:00:00 GMT"),
            Want::Made(200),
        ),
        Case::same(
            "If-None-Match: *",
            get(file).header("If-None-Match", "*"),
            Want::Made(304),
        ),
        Case::same(
            "If-None-Match: a tag wins over If-Modified-Since",
            get(file)
                .header("If-None-Match", "\"v1\"")
                .header("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT"),
            Want::Made(200),
        ),
    ];
    Group::new("www ranges", &["--www={www}"], cases(list))
}

/// `-w` and `-P` (short flags) with the API below the static prefix: the longer prefix
/// wins, as in Go's mux.
pub fn www_nested() -> Group {
    Group::new(
        "www under /ui/, API under /ui/api/",
        &["-w", "{www}", "-P", "/ui", "--api-prefix=/ui/api/"],
        cases(vec![
            Case::same("a file", get("/ui/hello.txt"), Want::Made(200)),
            Case::same("the index", get("/ui/"), Want::Made(200)),
            Case::same("the prefix without slash", get("/ui"), Want::Made(301)),
            Case::same("the API", get("/ui/api/api/v1/pods"), Want::Reach).uri("/api/v1/pods"),
            Case::same("the API prefix itself", get("/ui/api/"), Want::Reach).uri("/"),
            Case::same(
                "the API filter",
                get("/ui/api/api/v1/namespaces/d/pods/x/exec"),
                Want::Made(403),
            ),
            Case::same("elsewhere", get("/api/v1/pods"), Want::Made(404)),
            Case::same(
                "/static is nothing now",
                get("/static/hello.txt"),
                Want::Made(404),
            ),
        ]),
    )
}

/// `-u`: a unix socket instead of a port.
pub fn unix_socket() -> Group {
    Group::new(
        "unix socket",
        &[],
        cases(vec![
            Case::same(
                "GET, no X-Forwarded-For",
                get("/echo/u").host("localhost"),
                Want::Reach,
            ),
            Case::same(
                "prior X-Forwarded-For kept",
                get("/echo/u")
                    .host("localhost")
                    .header("X-Forwarded-For", "10.0.0.1"),
                Want::Reach,
            ),
            Case::same("list pods", get(P).host("localhost"), Want::Reach),
            Case::same(
                "evil host",
                get("/echo/u").host("evil.com"),
                Want::Made(403),
            ),
            Case::same(
                "exec",
                get(&p("/foo/exec")).host("localhost"),
                Want::Made(403),
            ),
            Case::same(
                "unclean",
                get("/api//v1").host("localhost"),
                Want::Made(301),
            ),
            Case::same(
                "upgrade: port-forward",
                get(&p("/foo/portforward"))
                    .host("localhost")
                    .upgrade("SPDY/3.1"),
                Want::Tunnel,
            ),
            Case::same(
                "upgrade: exec refused",
                get(&p("/foo/exec")).host("localhost").upgrade("SPDY/3.1"),
                Want::Made(403),
            ),
        ]),
    )
    .unix()
}

/// `--as`, `--as-group`, `--as-uid`, and the caller's own impersonation headers.
pub fn impersonation() -> Group {
    Group::new(
        "impersonation",
        &[
            "--as=alice",
            "--as-group=devs",
            "--as-group=ops",
            "--as-uid=1234",
        ],
        cases(vec![
            Case::same("configured impersonation", get("/echo/i"), Want::Reach).check(|o| {
                let s = o.seen();
                ensure(
                    s.header("impersonate-user") == Some("alice")
                        && s.header_all("impersonate-group") == ["devs", "ops"]
                        && s.header("impersonate-uid") == Some("1234"),
                    || format!("{:?}", s.headers),
                )
            }),
            Case::same(
                "caller's Impersonate-User wins",
                get("/echo/i").header("Impersonate-User", "bob"),
                Want::Reach,
            ),
            Case::same(
                "caller's Impersonate-Group only",
                get("/echo/i").header("Impersonate-Group", "callers"),
                Want::Reach,
            ),
            Case::same(
                "with the caller's token",
                get("/echo/i").header("Authorization", "Bearer own"),
                Want::Reach,
            ),
            Case::same(
                "upgrade",
                get(&p("/foo/portforward")).upgrade("SPDY/3.1"),
                Want::Tunnel,
            ),
            Case::same(
                "upgrade with the caller's Impersonate-User",
                get(&p("/foo/portforward"))
                    .header("Impersonate-User", "bob")
                    .upgrade("SPDY/3.1"),
                Want::Tunnel,
            ),
        ]),
    )
}

/// Upstream failures, token rotation and SIGTERM: where we differ on purpose.
pub fn lifecycle_groups() -> Vec<Group> {
    let unreachable = Group::new(
        "unreachable API server",
        &[],
        cases(vec![
            Case::differs("GET", get(P), Want::Made(500), "status-json", |k, o| {
                kubectl_500(k)?;
                status_json(o, 503)
            }),
            Case::differs(
                "upgrade",
                get(&p("/foo/portforward")).upgrade("SPDY/3.1"),
                Want::Made(500),
                "status-json",
                |k, o| {
                    kubectl_500(k)?;
                    status_json(o, 503)
                },
            ),
            Case::same("filter still first", get(&p("/foo/exec")), Want::Made(403)),
        ]),
    )
    .kubeconfig(Kubeconfig::Unreachable);
    let wrong_ca = Group::new(
        "API server with another CA",
        &[],
        cases(vec![Case::differs(
            "GET",
            get(P),
            Want::Made(500),
            "status-json",
            |k, o| {
                kubectl_500(k)?;
                status_json(o, 502)
            },
        )]),
    )
    .kubeconfig(Kubeconfig::WrongCa);
    let rotation = Group::new(
        "token file rotation",
        &[],
        vec![
            step(
                Case::same("before", get("/echo/t"), Want::Reach).check(|o| {
                    ensure(o.seen().token.as_deref() == Some(TOKEN), || {
                        format!("{:?}", o.seen().token)
                    })
                }),
            ),
            Step::RotateToken(ROTATED_TOKEN),
            step(Case::differs(
                "after",
                get("/echo/t"),
                Want::Reach,
                "token-rotation",
                |k, o| {
                    ensure(k.seen().token.as_deref() == Some(TOKEN), || {
                        format!("kubectl already sent {:?}", k.seen().token)
                    })?;
                    let seen = o.seen.as_ref().ok_or("ours did not reach the API server")?;
                    ensure(seen.token.as_deref() == Some(ROTATED_TOKEN), || {
                        format!("ours sent {:?}", seen.token)
                    })
                },
            )),
        ],
    )
    .kubeconfig(Kubeconfig::TokenFile);
    let sigterm = Group::new(
        "SIGTERM",
        &[],
        vec![
            step(Case::same("before", get("/echo/s"), Want::Reach)),
            Step::Terminate,
            step(Case::differs(
                "after",
                get("/echo/s"),
                Want::Refused,
                "sigterm-drain",
                |_, o| ours_reached(o, "/echo/s"),
            )),
        ],
    );
    vec![unreachable, wrong_ca, rotation, sigterm]
}
