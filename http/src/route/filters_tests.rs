//! Filter cases, from the examples of the Gateway API filter documentation.

use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header, request};

use super::filters::sampled;
use super::*;

fn parts(target: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut b = Request::builder().uri(target);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn prefix_match(p: &str) -> Match {
    Match {
        path: PathMatch::Prefix {
            prefix: p.trim_end_matches('/').to_string(),
            len: p.len(),
        },
        method: None,
        headers: Vec::new(),
        query_params: Vec::new(),
    }
}

fn h(n: &str, v: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_bytes(n.as_bytes()).unwrap(),
        HeaderValue::from_str(v).unwrap(),
    )
}

const CX: RedirectContext = RedirectContext {
    https: false,
    listener_port: 8080,
};

#[test]
fn replace_prefix_match_follows_the_spec_table() {
    // HTTPPathModifier.replacePrefixMatch: request path, prefix match, replacement, result.
    let table = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        // The documented example: PathPrefix /demo/ replaced by /.
        ("/demo/echo", "/demo/", "/", "/echo"),
        ("/anything", "/", "/base", "/base/anything"),
    ];
    for (path, prefix, replacement, want) in table {
        assert_eq!(
            replace_prefix(path, prefix, replacement).as_deref(),
            Some(want),
            "{path} {prefix} {replacement}"
        );
    }
    assert_eq!(replace_prefix("/foobar", "/foo", "/x"), None);
}

#[test]
fn header_modifiers_set_add_and_remove() {
    let m = HeaderModifier {
        set: vec![h("my-header", "bar")],
        add: vec![h("my-list", "bar,baz")],
        remove: vec![HeaderName::from_static("my-header3")],
    };
    let mut p = parts(
        "/foo",
        &[
            ("my-header", "foo"),
            ("my-list", "foo"),
            ("my-header2", "x"),
            ("my-header3", "baz"),
        ],
    );
    m.apply(&mut p.headers);
    let all = |n: &str| {
        p.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("my-header"), ["bar"]);
    assert_eq!(all("my-list"), ["foo", "bar,baz"]);
    assert_eq!(all("my-header2"), ["x"]);
    assert!(all("my-header3").is_empty());

    let mut resp = http::Response::new(()).into_parts().0;
    apply_response_filters(
        &[
            Filter::ResponseHeaders(m),
            Filter::RequestHeaders(HeaderModifier::default()),
        ],
        &mut resp,
    );
    assert_eq!(resp.headers.get("my-header").unwrap(), "bar");
}

#[test]
fn url_rewrite_changes_host_and_path_and_keeps_the_query() {
    let rewrite = Filter::UrlRewrite(UrlRewrite {
        hostname: Some(HeaderValue::from_static("internal.example")),
        path: Some(PathModifier::Prefix("/".into())),
    });
    let mut p = parts("/demo/echo?x=1", &[("host", "api.example.com")]);
    let out = apply_request_filters(
        std::slice::from_ref(&rewrite),
        &mut p,
        &prefix_match("/demo/"),
        CX,
    )
    .unwrap();
    assert_eq!(out, RequestOutcome::Forward);
    assert_eq!(p.uri.to_string(), "/echo?x=1");
    assert_eq!(p.headers[header::HOST], "internal.example");

    // HTTP/2 style: the authority is in the URI and is rewritten there too.
    let mut p = parts("https://api.example.com:8443/demo/a", &[]);
    apply_request_filters(&[rewrite], &mut p, &prefix_match("/demo"), CX).unwrap();
    assert_eq!(p.uri.to_string(), "https://internal.example/a");

    let full = Filter::UrlRewrite(UrlRewrite {
        hostname: None,
        path: Some(PathModifier::Full("/new".into())),
    });
    let mut p = parts("/old/path?q=2", &[]);
    apply_request_filters(&[full], &mut p, &prefix_match("/old"), CX).unwrap();
    assert_eq!(p.uri.to_string(), "/new?q=2");
}

fn redirect(
    scheme: Option<RedirectScheme>,
    host: Option<&str>,
    port: Option<u16>,
    path: Option<PathModifier>,
) -> Filter {
    Filter::Redirect(Redirect {
        scheme,
        hostname: host.map(str::to_string),
        path,
        port,
        status: StatusCode::MOVED_PERMANENTLY,
    })
}

#[test]
fn redirects_derive_the_port_as_the_spec_says() {
    let m = prefix_match("/foo");
    let loc = |f: Filter, target: &str, cx: RedirectContext| {
        let mut p = parts(target, &[("host", "api.example.com:8080")]);
        match apply_request_filters(&[f], &mut p, &m, cx).unwrap() {
            RequestOutcome::Redirect { status, location } => {
                assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
                location.to_str().unwrap().to_string()
            }
            RequestOutcome::Forward => panic!("not redirected"),
        }
    };
    // No scheme, no port: the listener's port.
    assert_eq!(
        loc(redirect(None, None, None, None), "/foo/a?x=1", CX),
        "http://api.example.com:8080/foo/a?x=1"
    );
    // A scheme and no port: its well-known port, left out of the Location.
    assert_eq!(
        loc(
            redirect(Some(RedirectScheme::Https), None, None, None),
            "/foo",
            CX
        ),
        "https://api.example.com/foo"
    );
    assert_eq!(
        loc(
            redirect(Some(RedirectScheme::Http), None, None, None),
            "/foo",
            CX
        ),
        "http://api.example.com/foo"
    );
    // An explicit port; 443 with https is left out.
    assert_eq!(
        loc(
            redirect(
                Some(RedirectScheme::Https),
                Some("www.example.com"),
                Some(8443),
                None
            ),
            "/foo",
            CX
        ),
        "https://www.example.com:8443/foo"
    );
    assert_eq!(
        loc(
            redirect(None, None, Some(443), None),
            "/foo",
            RedirectContext {
                https: true,
                listener_port: 8443
            }
        ),
        "https://api.example.com/foo"
    );
    // Listener on 80: no port shown.
    assert_eq!(
        loc(
            redirect(None, None, None, None),
            "/foo",
            RedirectContext {
                https: false,
                listener_port: 80
            }
        ),
        "http://api.example.com/foo"
    );
    // Paths: prefix replaced, or full.
    assert_eq!(
        loc(
            redirect(
                None,
                None,
                Some(80),
                Some(PathModifier::Prefix("/bar".into()))
            ),
            "/foo/x",
            CX
        ),
        "http://api.example.com/bar/x"
    );
    assert_eq!(
        loc(
            redirect(None, None, Some(80), Some(PathModifier::Full("/z".into()))),
            "/foo/x",
            CX
        ),
        "http://api.example.com/z"
    );
}

#[test]
fn a_redirect_without_any_host_is_an_error() {
    let mut p = parts("/foo", &[]);
    let err = apply_request_filters(
        &[redirect(None, None, None, None)],
        &mut p,
        &prefix_match("/"),
        CX,
    );
    assert!(matches!(err, Err(FilterError::NoHost)));
}

#[test]
fn filters_run_in_order_and_a_redirect_stops_them() {
    let set = |v: &str| {
        Filter::RequestHeaders(HeaderModifier {
            set: vec![h("x", v)],
            ..Default::default()
        })
    };
    let mut p = parts("/foo", &[("host", "h.example")]);
    let out = apply_request_filters(
        &[set("1"), redirect(None, None, None, None), set("2")],
        &mut p,
        &prefix_match("/"),
        CX,
    )
    .unwrap();
    assert!(matches!(out, RequestOutcome::Redirect { .. }));
    assert_eq!(p.headers["x"], "1");
}

#[test]
fn mirrors_sample_by_percent() {
    let backend = Backend {
        kind: BackendKind::Service {
            namespace: "ns".into(),
            name: "shadow".into(),
            port: 80,
        },
        weight: 1,
        filters: Vec::new(),
    };
    let mirror = |percent| {
        Filter::Mirror(Mirror {
            backend: backend.clone(),
            percent,
        })
    };
    assert_eq!(mirror_targets(&[mirror(100)], u32::MAX).count(), 1);
    assert_eq!(mirror_targets(&[mirror(0)], 0).count(), 0);
    // 25%: the lowest quarter of the random range.
    assert_eq!(mirror_targets(&[mirror(25)], u32::MAX / 4 - 1).count(), 1);
    assert_eq!(mirror_targets(&[mirror(25)], u32::MAX / 4 + 1).count(), 0);
    let hits = (0..1000u64)
        .filter(|i| sampled(30, u32::try_from((i * (1 << 32)).div_ceil(1000)).unwrap()))
        .count();
    assert_eq!(hits, 300);
    // Two mirrors, both taken.
    assert_eq!(
        mirror_targets(
            &[
                mirror(100),
                mirror(100),
                Filter::RequestHeaders(HeaderModifier::default())
            ],
            5
        )
        .count(),
        2
    );
}

#[test]
fn header_matches_join_repeated_values() {
    let m = HeaderMatch {
        name: HeaderName::from_static("x"),
        value: ValueMatch::Exact("a,b".into()),
    };
    let mut headers = HeaderMap::new();
    headers.append("x", HeaderValue::from_static("a"));
    assert!(!m.matches(&headers));
    headers.append("x", HeaderValue::from_static("b"));
    assert!(m.matches(&headers));
}
