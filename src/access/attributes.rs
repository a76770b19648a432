//! A request as the API server's authorizer sees it: verb + resource, not a path.
//!
//! A port of `k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`
//! (`RequestInfoFactory.NewRequestInfo`, with `APIPrefixes = {api, apis}` and
//! `GrouplessAPIPrefixes = {api}` as kube-apiserver configures it), applied to the
//! percent-decoded, clean path the router hands the filter (the API server decodes
//! `URL.Path` the same way before it splits it). Pure and borrowed: it runs on every
//! request, so it allocates only where Go would have to unescape something (a
//! percent-encoded `fieldSelector` name) or for a method name that is not a standard one.

use std::borrow::Cow;

use super::selector::ListQuery;

/// What the API server's `RequestInfo` holds for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// A request for a resource (`/api/v1/...`, `/apis/group/version/...`); otherwise a
    /// non-resource URL such as `/version`, `/healthz`, `/apis`.
    pub resource_request: bool,
    /// The decoded path the attributes were read from.
    pub path: &'a str,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, `proxy`; for a non-resource request the lower-case method.
    /// Empty for a resource request with a method the API server has no verb for.
    pub verb: Cow<'a, str>,
    /// `api` or `apis` (empty for a non-resource request).
    pub api_prefix: &'a str,
    /// The API group; empty for the core group (`/api`).
    pub group: &'a str,
    pub version: &'a str,
    /// Empty for a cluster-scoped request or one across all namespaces.
    pub namespace: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    /// The object's name from the path, or from `fieldSelector=metadata.name=X` on a list
    /// or watch (as the API server does since 1.11, so that RBAC `resourceNames` can
    /// allow single-object lists and watches).
    pub name: Cow<'a, str>,
    /// Go's `Parts`: `resource/name/subresource/...` joined by `/`.
    pub parts: &'a str,
}

/// `specialVerbs`: verbs written as a path segment (legacy `/api/v1/watch/...`).
const SPECIAL_VERBS: [&str; 2] = ["proxy", "watch"];
/// `namespaceSubresources`: `/namespaces/{ns}/status` is the namespace's subresource,
/// not a namespaced resource called `status`.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// How many path segments are located; the attributes never look further (prefix,
/// group, version, special verb, `namespaces`, namespace, resource, name, subresource).
const SEGMENTS: usize = 10;

/// A path split on `/` as Go's `strings.Split` splits it (an empty segment between two
/// slashes counts), in one pass over the bytes: the first [`SEGMENTS`] segments located,
/// all of them counted.
struct Segments<'a> {
    path: &'a str,
    bounds: [(usize, usize); SEGMENTS],
    count: usize,
}

impl<'a> Segments<'a> {
    fn new(path: &'a str) -> Self {
        let mut bounds = [(0, 0); SEGMENTS];
        if path.is_empty() {
            return Segments {
                path,
                bounds,
                count: 0,
            };
        }
        let mut count = 0;
        let mut start = 0;
        for (i, &b) in path.as_bytes().iter().enumerate() {
            if b == b'/' {
                if count < SEGMENTS {
                    bounds[count] = (start, i);
                }
                count += 1;
                start = i + 1;
            }
        }
        if count < SEGMENTS {
            bounds[count] = (start, path.len());
        }
        Segments {
            path,
            bounds,
            count: count + 1,
        }
    }

    /// Segment `i` (`""` past the end).
    fn get(&self, i: usize) -> &'a str {
        if i < self.count && i < SEGMENTS {
            let (a, b) = self.bounds[i];
            &self.path[a..b]
        } else {
            ""
        }
    }

    /// Segments `i..`, joined by `/` as in the path.
    fn from(&self, i: usize) -> &'a str {
        if i < self.count && i < SEGMENTS {
            &self.path[self.bounds[i].0..]
        } else {
            ""
        }
    }
}

/// Reads a request's attributes. `path` is the decoded, clean path below the API prefix;
/// `query` the raw (still escaped) query string.
pub fn parse<'a>(method: &'a str, path: &'a str, query: Option<&'a str>) -> Attributes<'a> {
    // Start with a non-resource request until proven otherwise.
    let mut info = Attributes {
        resource_request: false,
        path,
        verb: lower_method(method),
        api_prefix: "",
        group: "",
        version: "",
        namespace: "",
        resource: "",
        subresource: "",
        name: Cow::Borrowed(""),
        parts: "",
    };
    // Go's `splitPath`: trim slashes, then split.
    let segs = Segments::new(path.trim_matches('/'));
    // `at` is the first segment not yet read (Go's `currentParts[0]`).
    if segs.count < 3 {
        return info;
    }
    let prefix = segs.get(0);
    if prefix != "api" && prefix != "apis" {
        return info;
    }
    let mut at = 1;
    if prefix == "apis" {
        // One part (the prefix) is consumed: "do we have four parts?".
        if segs.count - at < 3 {
            return info;
        }
        info.group = segs.get(at);
        at += 1;
    }
    info.resource_request = true;
    info.api_prefix = prefix;
    info.version = segs.get(at);
    at += 1;

    let first = segs.get(at);
    if let Some(special) = SPECIAL_VERBS.iter().find(|v| **v == first) {
        if segs.count - at < 2 {
            // Go returns an error here ("unable to determine kind and namespace") and the
            // API server answers 500; the attributes stay as far as they were read.
            return info;
        }
        info.verb = Cow::Borrowed(*special);
        at += 1;
    } else {
        info.verb = Cow::Borrowed(match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        });
    }

    // /namespaces/{namespace}/{resource}/...: parts become relative to the resource.
    let left = segs.count - at;
    if segs.get(at) == "namespaces" && left > 1 {
        info.namespace = segs.get(at + 1);
        if left > 2 && !NAMESPACE_SUBRESOURCES.contains(&segs.get(at + 2)) {
            at += 2;
        }
    }
    info.parts = segs.from(at);

    // resource/name/subresource/anything/else/uninterpreted
    let left = segs.count - at;
    if left >= 3 && info.verb != "proxy" {
        info.subresource = segs.get(at + 2);
    }
    if left >= 2 {
        info.name = Cow::Borrowed(segs.get(at + 1));
    }
    info.resource = segs.get(at);

    // No name and a get: a list or a watch (v1.ListOptions).
    if info.name.is_empty() && info.verb == "get" {
        let list = ListQuery::parse(query);
        info.verb = Cow::Borrowed(if list.watch { "watch" } else { "list" });
        if let Some(name) = list.name {
            info.name = name;
        }
    }
    if info.name.is_empty() && info.verb == "delete" {
        info.verb = Cow::Borrowed("deletecollection");
    }
    info
}

/// Go's `strings.ToLower(req.Method)`, without allocating for the standard methods.
fn lower_method(method: &str) -> Cow<'_, str> {
    Cow::Borrowed(match method {
        "GET" => "get",
        "HEAD" => "head",
        "POST" => "post",
        "PUT" => "put",
        "PATCH" => "patch",
        "DELETE" => "delete",
        "OPTIONS" => "options",
        "TRACE" => "trace",
        "CONNECT" => "connect",
        m if !m.bytes().any(|b| b.is_ascii_uppercase()) => return Cow::Borrowed(m),
        m => return Cow::Owned(m.to_ascii_lowercase()),
    })
}

impl Attributes<'_> {
    /// `pods`, or `pods/log` for a subresource: how RBAC rules name it.
    pub fn rbac_resource(&self) -> Cow<'_, str> {
        if self.subresource.is_empty() {
            Cow::Borrowed(self.resource)
        } else {
            Cow::Owned(format!("{}/{}", self.resource, self.subresource))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(target: &str) -> (&str, Option<&str>) {
        match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        }
    }

    /// method, url, verb, prefix, group, version, namespace, resource, subresource, name,
    /// parts.
    type Row = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );

    /// requestinfo_test.go's `TestGetAPIRequestInfo` success cases, then the corners the
    /// issue names. Two columns differ from the Go table, which never checks them: its
    /// `expectedAPIPrefix` says "api" for `/apis/...` rows, and its `PATCH
    /// /api/v1/namespaces/new-namespace` row says namespace "" where the code (and so the
    /// API server, whose RBAC lets a Role in `ns` get namespace `ns`) gives "new-namespace".
    #[test]
    fn upstream_table() {
        #[rustfmt::skip]
        let cases: &[Row] = &[
            // method, url, verb, prefix, group, version, namespace, resource, subresource, name, parts
            ("GET", "/api/v1/namespaces", "list", "api", "", "v1", "", "namespaces", "", "", "namespaces"),
            ("GET", "/api/v1/namespaces/other", "get", "api", "", "v1", "other", "namespaces", "", "other", "namespaces/other"),
            ("GET", "/api/v1/namespaces/other/pods", "list", "api", "", "v1", "other", "pods", "", "", "pods"),
            ("GET", "/api/v1/namespaces/other/pods/foo", "get", "api", "", "v1", "other", "pods", "", "foo", "pods/foo"),
            ("HEAD", "/api/v1/namespaces/other/pods/foo", "get", "api", "", "v1", "other", "pods", "", "foo", "pods/foo"),
            ("GET", "/api/v1/pods", "list", "api", "", "v1", "", "pods", "", "", "pods"),
            ("HEAD", "/api/v1/pods", "list", "api", "", "v1", "", "pods", "", "", "pods"),
            ("PATCH", "/api/v1/namespaces/new-namespace", "patch", "api", "", "v1", "new-namespace", "namespaces", "", "new-namespace", "namespaces/new-namespace"),
            // special verbs
            ("GET", "/api/v1/proxy/namespaces/other/pods/foo", "proxy", "api", "", "v1", "other", "pods", "", "foo", "pods/foo"),
            ("GET", "/api/v1/proxy/namespaces/other/pods/foo/subpath/not/a/subresource", "proxy", "api", "", "v1", "other", "pods", "", "foo", "pods/foo/subpath/not/a/subresource"),
            ("GET", "/api/v1/watch/pods", "watch", "api", "", "v1", "", "pods", "", "", "pods"),
            ("GET", "/api/v1/pods?watch=true", "watch", "api", "", "v1", "", "pods", "", "", "pods"),
            ("GET", "/api/v1/pods?watch=false", "list", "api", "", "v1", "", "pods", "", "", "pods"),
            ("GET", "/api/v1/watch/namespaces/other/pods", "watch", "api", "", "v1", "other", "pods", "", "", "pods"),
            ("GET", "/api/v1/namespaces/other/pods?watch=1", "watch", "api", "", "v1", "other", "pods", "", "", "pods"),
            ("GET", "/api/v1/namespaces/other/pods?watch=0", "list", "api", "", "v1", "other", "pods", "", "", "pods"),
            // subresource identification
            ("GET", "/api/v1/namespaces/other/pods/foo/status", "get", "api", "", "v1", "other", "pods", "status", "foo", "pods/foo/status"),
            ("GET", "/api/v1/namespaces/other/pods/foo/proxy/subpath", "get", "api", "", "v1", "other", "pods", "proxy", "foo", "pods/foo/proxy/subpath"),
            ("PUT", "/api/v1/namespaces/other/finalize", "update", "api", "", "v1", "other", "namespaces", "finalize", "other", "namespaces/other/finalize"),
            ("PUT", "/api/v1/namespaces/other/status", "update", "api", "", "v1", "other", "namespaces", "status", "other", "namespaces/other/status"),
            // verb identification
            ("PATCH", "/api/v1/namespaces/other/pods/foo", "patch", "api", "", "v1", "other", "pods", "", "foo", "pods/foo"),
            ("DELETE", "/api/v1/namespaces/other/pods/foo", "delete", "api", "", "v1", "other", "pods", "", "foo", "pods/foo"),
            ("POST", "/api/v1/namespaces/other/pods", "create", "api", "", "v1", "other", "pods", "", "", "pods"),
            // deletecollection verb identification
            ("DELETE", "/api/v1/nodes", "deletecollection", "api", "", "v1", "", "nodes", "", "", "nodes"),
            ("DELETE", "/api/v1/namespaces", "deletecollection", "api", "", "v1", "", "namespaces", "", "", "namespaces"),
            ("DELETE", "/api/v1/namespaces/other/pods", "deletecollection", "api", "", "v1", "other", "pods", "", "", "pods"),
            ("DELETE", "/apis/extensions/v1/namespaces/other/pods", "deletecollection", "apis", "extensions", "v1", "other", "pods", "", "", "pods"),
            // api group and version identification
            ("POST", "/apis/extensions/v1/namespaces/other/pods", "create", "apis", "extensions", "v1", "other", "pods", "", "", "pods"),
            ("POST", "/apis/extensions/v1beta3/namespaces/other/pods", "create", "apis", "extensions", "v1beta3", "other", "pods", "", "", "pods"),
            // The corners.
            ("GET", "/api/v1/namespaces/ns", "get", "api", "", "v1", "ns", "namespaces", "", "ns", "namespaces/ns"),
            ("GET", "/api/v1/namespaces/ns/pods/p/log", "get", "api", "", "v1", "ns", "pods", "log", "p", "pods/p/log"),
            ("GET", "/api/v1/namespaces/ns/pods/p/log?follow=true", "get", "api", "", "v1", "ns", "pods", "log", "p", "pods/p/log"),
            ("GET", "/apis/apps/v1/deployments", "list", "apis", "apps", "v1", "", "deployments", "", "", "deployments"),
            ("GET", "/apis/apps/v1/watch/namespaces/d/deployments/web", "watch", "apis", "apps", "v1", "d", "deployments", "", "web", "deployments/web"),
            ("PATCH", "/apis/apps/v1/namespaces/d/deployments/web/scale", "patch", "apis", "apps", "v1", "d", "deployments", "scale", "web", "deployments/web/scale"),
            ("GET", "/apis/stable.example.com/v1/namespaces/d/crontabs/c1", "get", "apis", "stable.example.com", "v1", "d", "crontabs", "", "c1", "crontabs/c1"),
            ("GET", "/apis/stable.example.com/v1/crontabs?watch", "watch", "apis", "stable.example.com", "v1", "", "crontabs", "", "", "crontabs"),
            ("GET", "/api/v1/namespaces/ns/pods/", "list", "api", "", "v1", "ns", "pods", "", "", "pods"),
            ("GET", "/api/v1/namespaces/ns/pods/p/", "get", "api", "", "v1", "ns", "pods", "", "p", "pods/p"),
            ("POST", "/api/v1/namespaces/ns/pods/p/exec?command=ls", "create", "api", "", "v1", "ns", "pods", "exec", "p", "pods/p/exec"),
            ("GET", "/api/v1/namespaces/ns/services/s:80/proxy/a/b", "get", "api", "", "v1", "ns", "services", "proxy", "s:80", "services/s:80/proxy/a/b"),
            ("POST", "/api/v1/namespaces/ns/serviceaccounts/sa/token", "create", "api", "", "v1", "ns", "serviceaccounts", "token", "sa", "serviceaccounts/sa/token"),
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "create", "apis", "authorization.k8s.io", "v1", "", "selfsubjectaccessreviews", "", "", "selfsubjectaccessreviews"),
            ("OPTIONS", "/api/v1/pods", "", "api", "", "v1", "", "pods", "", "", "pods"),
            // fieldSelector=metadata.name=X names the object of a list or watch.
            ("GET", "/api/v1/namespaces/ns/configmaps?fieldSelector=metadata.name%3Dcm1&watch=1", "watch", "api", "", "v1", "ns", "configmaps", "", "cm1", "configmaps"),
            ("GET", "/api/v1/namespaces/ns/configmaps?fieldSelector=metadata.name==cm1", "list", "api", "", "v1", "ns", "configmaps", "", "cm1", "configmaps"),
            ("GET", "/api/v1/namespaces/ns/configmaps?fieldSelector=a%3Db,metadata.name%3Dcm1", "list", "api", "", "v1", "ns", "configmaps", "", "cm1", "configmaps"),
            ("GET", "/api/v1/namespaces/ns/configmaps?fieldSelector=metadata.name!%3Dcm1", "list", "api", "", "v1", "ns", "configmaps", "", "", "configmaps"),
            ("GET", "/api/v1/namespaces/ns/configmaps?fieldSelector=metadata.name%3Da%2Fb", "list", "api", "", "v1", "ns", "configmaps", "", "", "configmaps"),
            ("DELETE", "/api/v1/namespaces/ns/configmaps?fieldSelector=metadata.name%3Dcm1", "deletecollection", "api", "", "v1", "ns", "configmaps", "", "", "configmaps"),
        ];
        for &(method, url, verb, prefix, group, version, ns, resource, sub, name, parts) in cases {
            let (path, query) = split(url);
            let got = parse(method, path, query);
            let want = Attributes {
                resource_request: true,
                path,
                verb: verb.into(),
                api_prefix: prefix,
                group,
                version,
                namespace: ns,
                resource,
                subresource: sub,
                name: name.into(),
                parts,
            };
            assert_eq!(got, want, "{method} {url}");
        }
    }

    /// requestinfo_test.go's error cases and `TestGetNonAPIRequestInfo`.
    #[test]
    fn resource_or_not() {
        for (url, resource) in [
            ("/api/version/resource", true),
            ("/apis/group/version/resource/name/subresource", true),
            ("/api/version/resource/name/subresource", true),
            ("/apis/batch/v1/job", true),
            ("/apis/batch/v1/job/foo", true),
            ("/apis/batch/v1/job/foo/scale", true),
            ("/not-api/version/resource", false),
            ("/apis/extensions/v1beta1", false),
            ("/apis/extensions/v1beta1/", false),
            ("/api/version", false),
            ("/api", false),
            ("/", false),
            ("", false),
            ("/api/version/", false),
            ("/apis/group/version/", false),
            ("/badprefix/version/resource", false),
            ("/apis/version/resource", false),
            ("/version", false),
            ("/healthz/etcd", false),
            ("/openapi/v3/apis/apps/v1", false),
        ] {
            assert_eq!(parse("GET", url, None).resource_request, resource, "{url}");
        }
        let v = parse("GET", "/version", None);
        assert_eq!((&*v.verb, v.resource, v.path), ("get", "", "/version"));
        assert_eq!(parse("POST", "/apis", None).verb, "post");
        assert_eq!(parse("BREW", "/x", None).verb, "brew");
        // Go errors on a special verb with nothing after it; the API server answers 500.
        let w = parse("GET", "/api/v1/watch", None);
        assert!(w.resource_request);
        assert_eq!((&*w.verb, w.resource), ("get", ""));
    }

    /// requestinfo_test.go's `TestFieldSelectorParsing`.
    #[test]
    fn field_selector_table() {
        for (url, name, verb) in [
            ("/apis/group/version/resource", "", "list"),
            (
                "/apis/group/version/resource?fieldSelector=metadata.name=name1",
                "name1",
                "list",
            ),
            (
                "/apis/group/version/resource?watch=true&fieldSelector=metadata.name=name1",
                "name1",
                "watch",
            ),
            (
                "/apis/group/version/resource?fieldSelector=foo=bar",
                "",
                "list",
            ),
            (
                "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo",
                "",
                "list",
            ),
            (
                "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=true",
                "",
                "watch",
            ),
            (
                "/apis/group/version/resource?fieldSelector=metadata.name=name1,foo&watch=false",
                "",
                "list",
            ),
            // Escapes in the selector value (`\,` is a comma; a name cannot hold one, but
            // the parse must not fail), `+` as a space, a bad escape skips the pair.
            (
                "/apis/g/v/r?fieldSelector=metadata.name%3Da%5C%2Cb",
                "a,b",
                "list",
            ),
            ("/apis/g/v/r?fieldSelector=metadata.name%3Da%5C", "", "list"),
            ("/apis/g/v/r?watch=%zz&watch=1", "", "watch"),
            ("/apis/g/v/r?w%61tch=TRUE", "", "watch"),
            ("/apis/g/v/r?watch=", "", "watch"),
            ("/apis/g/v/r?watch=FALSE", "", "list"),
            ("/apis/g/v/r?watch;x=1", "", "list"),
        ] {
            let (path, query) = split(url);
            let got = parse("GET", path, query);
            assert_eq!((&*got.name, &*got.verb), (name, verb), "{url}");
        }
    }

    #[test]
    fn borrowed_when_nothing_is_escaped() {
        let a = parse(
            "GET",
            "/api/v1/namespaces/d/pods",
            Some("fieldSelector=metadata.name=p"),
        );
        assert!(matches!(a.name, Cow::Borrowed("p")));
        assert!(matches!(a.verb, Cow::Borrowed("list")));
        assert_eq!(a.rbac_resource(), "pods");
        let log = parse("GET", "/api/v1/namespaces/d/pods/p/log", None);
        assert_eq!(log.rbac_resource(), "pods/log");
    }
}
