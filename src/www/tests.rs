//! The static file server's behaviour, request by request, against Go's `http.FileServer`.

use super::body::CHUNK;
use super::conditional::*;
use super::lookup::*;
use super::range::*;
use super::*;
use bytes::Bytes;
use hyper::body::Body as _;

use http_body_util::BodyExt as _;

fn www() -> (tempfile::TempDir, Www) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("hello.txt"), "hello\n").unwrap();
    fs::write(root.join("app.js"), "x()").unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    fs::write(root.join("sub").join("index.html"), "<p>sub</p>").unwrap();
    fs::create_dir(root.join("list")).unwrap();
    fs::write(root.join("list").join("b a?.txt"), "").unwrap();
    fs::create_dir(root.join("list").join("dir")).unwrap();
    fs::write(dir.path().join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink("../secret", root.join("escape")).unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("inside")).unwrap();
    (dir, Www::new(root))
}

/// GET `path` (with `query`, and request `headers`): status, headers, whole body.
async fn request(
    w: &Www,
    path: &str,
    query: Option<&str>,
    headers: &[(header::HeaderName, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    for (name, value) in headers {
        h.append(name.clone(), HeaderValue::from_str(value).unwrap());
    }
    let resp = w.serve(&Method::GET, &h, path, query).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

async fn get(w: &Www, path: &str, query: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
    request(w, path, query, &[]).await
}

#[tokio::test]
async fn files_redirects_and_refusals_follow_go() {
    let (_dir, w) = www();
    let (code, h, body) = get(&w, "hello.txt", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body, "hello\n");
    assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(h[header::CONTENT_LENGTH], "6");
    assert!(h.contains_key(header::LAST_MODIFIED));
    let (_, h, _) = get(&w, "app.js", None).await;
    assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");

    let (code, h, body) = get(&w, "sub/", None).await;
    assert_eq!((code, &body[..]), (StatusCode::OK, &b"<p>sub</p>"[..]));
    assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let redirects = [
        ("sub", None, "sub/"),
        ("sub", Some("a=1"), "sub/?a=1"),
        ("sub/index.html", None, "./"),
        ("index.html", None, "./"),
        ("hello.txt/", None, "../hello.txt"),
    ];
    for (path, query, location) in redirects {
        let (code, h, _) = get(&w, path, query).await;
        assert_eq!(code, StatusCode::MOVED_PERMANENTLY, "{path}");
        assert_eq!(h[header::LOCATION], location, "{path}");
    }
    for path in [
        "missing",
        "hello.txt/x",
        "../secret",
        "sub/../../secret",
        "escape",
        "a\0b",
    ] {
        let (code, _, body) = get(&w, path, None).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body, "404 page not found\n");
    }
    let (code, _, body) = get(&w, "inside", None).await;
    assert_eq!((code, &body[..]), (StatusCode::OK, &b"hello\n"[..]));
}

#[tokio::test]
async fn a_directory_without_index_is_listed_like_go() {
    let (_dir, w) = www();
    let (code, h, body) = get(&w, "list/", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(
        body,
        "<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n\
         <a href=\"b%20a%3F.txt\">b a?.txt</a>\n<a href=\"dir/\">dir/</a>\n</pre>\n"
    );
}

#[tokio::test]
async fn head_conditional_and_other_methods() {
    let (_dir, w) = www();
    let resp = w
        .serve(&Method::HEAD, &HeaderMap::new(), "hello.txt", None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "6");
    assert!(resp.body().is_end_stream());

    let (_, h, _) = get(&w, "hello.txt", None).await;
    let mut cond = HeaderMap::new();
    cond.insert(header::IF_MODIFIED_SINCE, h[header::LAST_MODIFIED].clone());
    let resp = w.serve(&Method::GET, &cond, "hello.txt", None).await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        resp.headers()[header::LAST_MODIFIED],
        h[header::LAST_MODIFIED]
    );
    cond.insert(
        header::IF_MODIFIED_SINCE,
        HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
    );
    let resp = w.serve(&Method::GET, &cond, "hello.txt", None).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = w
        .serve(&Method::POST, &HeaderMap::new(), "hello.txt", None)
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[header::ALLOW], "GET, HEAD");
}

#[tokio::test]
async fn a_large_file_is_streamed_in_chunks() {
    let (dir, w) = www();
    let data: Vec<u8> = (0..CHUNK * 3 + 17).map(|i| (i % 251) as u8).collect();
    fs::write(dir.path().join("www").join("big.bin"), &data).unwrap();
    let resp = w
        .serve(&Method::GET, &HeaderMap::new(), "big.bin", None)
        .await;
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    let mut body = resp.into_body();
    let mut frames = 0;
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            assert!(d.len() <= CHUNK);
            got.extend_from_slice(d);
            frames += 1;
        }
    }
    assert!(frames >= 4, "{frames} frames");
    assert_eq!(got, data);
}

async fn get_with(
    w: &Www,
    path: &str,
    headers: &[(header::HeaderName, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    request(w, path, None, headers).await
}

#[test]
fn ranges_parse_as_go_parses_them() {
    let r = |start, len| ByteRange { start, len };
    let ok = |v: &str, size| parse_range(v.as_bytes(), size);
    let invalid = Err(RangeError::Invalid);
    assert_eq!(ok("bytes=0-4", 10), Ok(vec![r(0, 5)]));
    assert_eq!(ok("bytes=2-", 10), Ok(vec![r(2, 8)]));
    assert_eq!(ok("bytes=-3", 10), Ok(vec![r(7, 3)]));
    assert_eq!(ok("bytes=-30", 10), Ok(vec![r(0, 10)]));
    assert_eq!(ok("bytes=-0", 10), Ok(vec![r(10, 0)]));
    assert_eq!(ok("bytes=5-99", 10), Ok(vec![r(5, 5)]));
    assert_eq!(ok("bytes= +1 - 2 ,, 9-", 10), Ok(vec![r(1, 2), r(9, 1)]));
    assert_eq!(ok("bytes=3-4,0-1", 10), Ok(vec![r(3, 2), r(0, 2)]));
    // Nothing listed: no range at all, so the whole file.
    assert_eq!(ok("bytes=", 10), Ok(vec![]));
    // Ranges past the end are dropped; all of them past it is the 416 case.
    assert_eq!(ok("bytes=10-,0-0", 10), Ok(vec![r(0, 1)]));
    assert_eq!(ok("bytes=10-", 10), Err(RangeError::NoOverlap));
    assert_eq!(ok("bytes=0-0", 0), Err(RangeError::NoOverlap));
    for bad in [
        "bytes 0-1",
        "Bytes=0-1",
        "bytes=1",
        "bytes=4-1",
        "bytes=--1",
        "bytes=-",
        "bytes=-1-",
        "bytes=a-1",
        "bytes=1-b",
        "bytes=-1-2",
        "bytes=0x1-2",
        "bytes=1_0-2",
        "bytes=99999999999999999999-",
        "bytes=1--2",
    ] {
        assert_eq!(ok(bad, 10), invalid, "{bad}");
    }
    assert_eq!(parse_range(b"bytes=0-\xff", 10), invalid);
    assert_eq!(r(0, 0).content_range(0), "bytes 0--1/0");
    assert_eq!(r(2, 3).content_range(10), "bytes 2-4/10");
}

#[test]
fn entity_tag_lists_as_go_scans_them() {
    assert!(star_listed(b"*"));
    assert!(star_listed(b" \"a\", W/\"b\" ,*"));
    assert!(!star_listed(b"\"a\""));
    assert!(!star_listed(b"a, *"), "stops at what is not an entity tag");
    assert!(!star_listed(b"\"a"));
    assert!(!star_listed(b""));
    assert_eq!(scan_etag(b"W/\"x\" rest"), Some(&b" rest"[..]));
    assert_eq!(scan_etag(b"\"\""), Some(&b""[..]));
    assert_eq!(scan_etag(b"\"a b\""), None);
    assert_eq!(scan_etag(b"W/x"), None);
}

#[tokio::test]
async fn one_range_is_a_206_with_content_range() {
    let (_dir, w) = www();
    let (code, h, body) = get_with(&w, "hello.txt", &[(header::RANGE, "bytes=1-3")]).await;
    assert_eq!(code, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, "ell");
    assert_eq!(h[header::CONTENT_RANGE], "bytes 1-3/6");
    assert_eq!(h[header::CONTENT_LENGTH], "3");
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");

    let (code, h, body) = get_with(&w, "hello.txt", &[]).await;
    assert_eq!((code, &body[..]), (StatusCode::OK, &b"hello\n"[..]));
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");

    let mut range = HeaderMap::new();
    range.insert(header::RANGE, HeaderValue::from_static("bytes=-2"));
    let resp = w.serve(&Method::HEAD, &range, "hello.txt", None).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "2");
    assert!(resp.body().is_end_stream());
}

#[tokio::test]
async fn unsatisfiable_ranges_are_416_in_gos_words() {
    let (_dir, w) = www();
    let (code, h, body) = get_with(&w, "hello.txt", &[(header::RANGE, "bytes=6-")]).await;
    assert_eq!(code, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(body, "invalid range: failed to overlap\n");
    assert_eq!(h[header::CONTENT_RANGE], "bytes */6");
    let (code, h, body) = get_with(&w, "hello.txt", &[(header::RANGE, "lines=1-2")]).await;
    assert_eq!(code, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(body, "invalid range\n");
    assert!(!h.contains_key(header::CONTENT_RANGE));
    // More bytes asked for than the file has: ignored.
    let (code, _, body) = get_with(&w, "hello.txt", &[(header::RANGE, "bytes=0-,1-")]).await;
    assert_eq!((code, &body[..]), (StatusCode::OK, &b"hello\n"[..]));
}

#[tokio::test]
async fn several_ranges_are_multipart_and_may_go_backwards_across_chunks() {
    let (dir, w) = www();
    let data: Vec<u8> = (0..CHUNK * 3).map(|i| (i % 251) as u8).collect();
    fs::write(dir.path().join("www").join("big.bin"), &data).unwrap();
    let (a, b) = (CHUNK as u64 + 5, 2 * CHUNK as u64 + 100);
    let spec = format!("bytes={a}-{b}, 0-9, -3");
    let (code, h, body) = get_with(&w, "big.bin", &[(header::RANGE, &spec)]).await;
    assert_eq!(code, StatusCode::PARTIAL_CONTENT);
    let ctype = h[header::CONTENT_TYPE].to_str().unwrap();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap();
    assert_eq!(boundary.len(), 60);
    assert!(boundary.bytes().all(|c| c.is_ascii_hexdigit()));
    let size = data.len();
    let part = |lead: &str, first: usize, last: usize| {
        let mut p = format!(
            "{lead}--{boundary}\r\nContent-Range: bytes {first}-{last}/{size}\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        p.extend_from_slice(&data[first..=last]);
        p
    };
    let mut want = part("", a as usize, b as usize);
    want.extend(part("\r\n", 0, 9));
    want.extend(part("\r\n", size - 3, size - 1));
    want.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    assert_eq!(h[header::CONTENT_LENGTH], want.len().to_string().as_str());
    assert_eq!(body.len(), want.len());
    assert!(body == want, "the multipart body differs");
}

#[tokio::test]
async fn conditions_follow_gos_order() {
    let (_dir, w) = www();
    let (_, h, _) = get_with(&w, "hello.txt", &[]).await;
    let modified = h[header::LAST_MODIFIED].to_str().unwrap().to_owned();
    let past = "Sun, 06 Nov 1994 08:49:37 GMT";
    let future = "Fri, 01 Jan 2100 00:00:00 GMT";
    let m = modified.as_str();
    let cases: Vec<(Vec<(header::HeaderName, &str)>, StatusCode)> = vec![
        (vec![(header::IF_MATCH, "*")], StatusCode::OK),
        (
            vec![(header::IF_MATCH, "\"v\"")],
            StatusCode::PRECONDITION_FAILED,
        ),
        (vec![(header::IF_MATCH, "")], StatusCode::OK),
        (
            vec![(header::IF_UNMODIFIED_SINCE, past)],
            StatusCode::PRECONDITION_FAILED,
        ),
        (vec![(header::IF_UNMODIFIED_SINCE, m)], StatusCode::OK),
        // If-Match decides alone when it is there.
        (
            vec![(header::IF_MATCH, "*"), (header::IF_UNMODIFIED_SINCE, past)],
            StatusCode::OK,
        ),
        (vec![(header::IF_NONE_MATCH, "*")], StatusCode::NOT_MODIFIED),
        (
            vec![
                (header::IF_NONE_MATCH, "\"v\""),
                (header::IF_MODIFIED_SINCE, future),
            ],
            StatusCode::OK,
        ),
        (
            vec![(header::IF_MODIFIED_SINCE, m)],
            StatusCode::NOT_MODIFIED,
        ),
        // If-Range: the file's own date keeps the range; anything else drops it.
        (
            vec![(header::RANGE, "bytes=0-1"), (header::IF_RANGE, m)],
            StatusCode::PARTIAL_CONTENT,
        ),
        (
            vec![(header::RANGE, "bytes=0-1"), (header::IF_RANGE, past)],
            StatusCode::OK,
        ),
        (
            vec![(header::RANGE, "bytes=0-1"), (header::IF_RANGE, "\"v\"")],
            StatusCode::OK,
        ),
        (
            vec![(header::RANGE, "bytes=0-1"), (header::IF_RANGE, "soon")],
            StatusCode::OK,
        ),
    ];
    for (headers, want) in cases {
        let (got, _, _) = get_with(&w, "hello.txt", &headers).await;
        assert_eq!(got, want, "{headers:?}");
    }
    let (code, h, body) = get_with(&w, "hello.txt", &[(header::IF_MATCH, "\"v\"")]).await;
    assert_eq!(code, StatusCode::PRECONDITION_FAILED);
    assert!(body.is_empty());
    assert_eq!(h[header::LAST_MODIFIED], m);
}

#[tokio::test]
async fn special_files_are_not_served() {
    let (dir, w) = www();
    let fifo = dir.path().join("www").join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    let (code, _, _) = get(&w, "fifo", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[test]
fn helpers() {
    assert_eq!(relative("/a/./b//c/"), Some(PathBuf::from("a/b/c")));
    assert_eq!(relative("/"), Some(PathBuf::new()));
    assert_eq!(relative("/a/../b"), None);
    assert_eq!(base("/a/b/"), "b");
    assert_eq!(base("/"), "");
    assert_eq!(escape("a b#?%/ü"), "a%20b%23%3F%25/%C3%BC");
    assert_eq!(content_type("/x/Y.PNG"), "image/png");
    assert_eq!(content_type("/x/README"), "application/octet-stream");
    assert_eq!(content_type("/x.unknown"), "application/octet-stream");
}
