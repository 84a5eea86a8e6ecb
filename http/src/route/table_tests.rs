//! Route selection cases from the Gateway API rules: `HTTPRouteSpec.hostnames`
//! (intersection, wildcards, hostname precedence) and `HTTPRouteRule.matches` (path type and
//! length, method, header and query counts, oldest route, `namespace/name`, rule order),
//! plus parentRef attachment by sectionName and port.
//!
//! Routes are written as protos and converted, so the conversion is exercised too. Each
//! request names the `namespace/name/rule` it must reach, or `None` for a 404.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use weft_proto::discovery::v1 as pb;

use super::{ListenerRef, Route, RouteTable};

// === builders ===

fn listener(name: &str, port: u16, hostname: Option<&str>) -> ListenerRef {
    ListenerRef::try_from(&pb::Listener {
        name: name.into(),
        namespace: "gw".into(),
        gateway: "edge".into(),
        port: port.into(),
        hostname: hostname.unwrap_or_default().into(),
        ..Default::default()
    })
    .unwrap()
}

fn parent() -> pb::ParentRef {
    pb::ParentRef {
        kind: "Gateway".into(),
        name: "edge".into(),
        namespace: "gw".into(),
        ..Default::default()
    }
}

struct R(pb::ApiRoute);

fn route(ns: &str, name: &str) -> R {
    R(pb::ApiRoute {
        name: name.into(),
        namespace: ns.into(),
        kind: pb::ApiRouteKind::Http.into(),
        parents: vec![parent()],
        ..Default::default()
    })
}

impl R {
    fn hosts(mut self, hosts: &[&str]) -> Self {
        self.0.route_hostnames = hosts.iter().map(|h| h.to_string()).collect();
        self
    }
    fn created(mut self, ms: u64) -> Self {
        self.0.created_at_unix_ms = ms;
        self
    }
    fn parent(mut self, p: pb::ParentRef) -> Self {
        self.0.parents = vec![p];
        self
    }
    fn grpc(mut self) -> Self {
        self.0.kind = pb::ApiRouteKind::Grpc.into();
        self
    }
    /// A rule with one match.
    fn rule(mut self, m: M) -> Self {
        self.0.rules.push(pb::RouteRule {
            matches: vec![m.0],
            backends: vec![pb::BackendRef {
                kind: "Service".into(),
                name: "b".into(),
                port: 80,
                weight: 1,
                ..Default::default()
            }],
            ..Default::default()
        });
        self
    }
}

struct M(pb::RouteMatch);

fn path(t: pb::MatchType, v: &str) -> M {
    M(pb::RouteMatch {
        path: Some(pb::PathMatch {
            r#type: t.into(),
            value: v.into(),
        }),
        ..Default::default()
    })
}
fn prefix(v: &str) -> M {
    path(pb::MatchType::PathPrefix, v)
}
fn exact(v: &str) -> M {
    path(pb::MatchType::Exact, v)
}
fn regex(v: &str) -> M {
    path(pb::MatchType::RegularExpression, v)
}

impl M {
    fn method(mut self, m: &str) -> Self {
        self.0.method = m.into();
        self
    }
    fn header(mut self, n: &str, v: &str) -> Self {
        self.0.headers.push(pb::HeaderMatch {
            r#type: pb::MatchType::Exact.into(),
            name: n.into(),
            value: v.into(),
        });
        self
    }
    fn query(mut self, n: &str, v: &str) -> Self {
        self.0.query_params.push(pb::HeaderMatch {
            r#type: pb::MatchType::Exact.into(),
            name: n.into(),
            value: v.into(),
        });
        self
    }
}

/// A request: method, target, and headers as `name: value` strings (`host: ...` too).
type Req<'a> = (&'a str, &'a str, &'a [&'a str]);

fn run(
    scenario: &str,
    l: &ListenerRef,
    routes: Vec<R>,
    cases: &[(Req<'_>, Option<&str>)],
) -> usize {
    let routes: Vec<Arc<Route>> = routes
        .into_iter()
        .map(|r| Arc::new(Route::try_from(&r.0).unwrap()))
        .collect();
    let table = RouteTable::build(l, &routes);
    for ((method, target, headers), want) in cases {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let uri: Uri = target.parse().unwrap();
        let mut map = HeaderMap::new();
        for h in *headers {
            let (n, v) = h.split_once(": ").unwrap();
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let got = table
            .select(&method, &uri, &map)
            .map(|s| format!("{}/{}", s.route.key, s.rule_index));
        assert_eq!(
            got.as_deref(),
            *want,
            "{scenario}: {method} {target} {headers:?}"
        );
    }
    cases.len()
}

// === cases ===

#[test]
fn gateway_api_precedence_and_matching() {
    let mut n = 0;

    // Hostnames on a listener without one: exact before wildcard, longer wildcard first,
    // a wildcard covers one or more labels but not its own suffix, Host port ignored.
    n += run(
        "hostnames",
        &listener("http", 8080, None),
        vec![
            route("ns", "a")
                .hosts(&["api.example.com"])
                .rule(prefix("/")),
            route("ns", "b")
                .hosts(&["*.example.com"])
                .rule(prefix("/"))
                .rule(exact("/exact")),
            route("ns", "c")
                .hosts(&["*.b.example.com"])
                .rule(prefix("/")),
            route("ns", "d").rule(prefix("/")),
            route("ns", "e")
                .hosts(&["other.example.com"])
                .rule(exact("/only")),
        ],
        &[
            (("GET", "/", &["host: api.example.com"]), Some("ns/a/0")),
            (
                ("GET", "/", &["host: API.Example.com:8080"]),
                Some("ns/a/0"),
            ),
            (("GET", "/", &["host: x.example.com"]), Some("ns/b/0")),
            (("GET", "/", &["host: x.y.example.com"]), Some("ns/b/0")),
            (("GET", "/", &["host: x.b.example.com"]), Some("ns/c/0")),
            (("GET", "/", &["host: b.example.com"]), Some("ns/b/0")),
            (("GET", "/", &["host: example.com"]), Some("ns/d/0")),
            (("GET", "/", &["host: foo.org"]), Some("ns/d/0")),
            (("GET", "/", &[]), Some("ns/d/0")),
            (
                ("GET", "/only", &["host: other.example.com"]),
                Some("ns/e/0"),
            ),
            // Hostname precedence orders routes; a request the exact route does not take
            // falls to the wildcard's rules.
            (("GET", "/x", &["host: other.example.com"]), Some("ns/b/0")),
            // The request's authority wins over a Host header.
            (
                ("GET", "http://api.example.com/", &["host: x.example.com"]),
                Some("ns/a/0"),
            ),
            // Host precedence comes before path precedence.
            (
                ("GET", "/exact", &["host: api.example.com"]),
                Some("ns/a/0"),
            ),
            (("GET", "/exact", &["host: x.example.com"]), Some("ns/b/1")),
        ],
    );

    // A listener hostname: route hostnames outside it are ignored, a route without
    // hostnames takes the listener's, a route with none in common does not attach.
    n += run(
        "listener hostname",
        &listener("http", 8080, Some("*.example.com")),
        vec![
            route("ns", "a")
                .hosts(&["foo.example.com", "test.example.net"])
                .rule(prefix("/")),
            route("ns", "b").hosts(&["example.com"]).rule(prefix("/")),
            route("ns", "c").rule(prefix("/")),
        ],
        &[
            (("GET", "/", &["host: foo.example.com"]), Some("ns/a/0")),
            (("GET", "/", &["host: test.example.net"]), None),
            (("GET", "/", &["host: example.com"]), None),
            (("GET", "/", &["host: bar.example.com"]), Some("ns/c/0")),
        ],
    );

    // Path types: Exact, then the longest PathPrefix on segment boundaries (a trailing
    // `/` ignored); a RegularExpression (full match) ranks between the two.
    n += run(
        "paths",
        &listener("http", 8080, None),
        vec![
            route("ns", "p")
                .rule(exact("/foo"))
                .rule(prefix("/foo"))
                .rule(prefix("/foo/bar/"))
                .rule(regex("/foo/[0-9]+"))
                .rule(prefix("/")),
        ],
        &[
            (("GET", "/foo", &[]), Some("ns/p/0")),
            (("GET", "/foo/", &[]), Some("ns/p/1")),
            (("GET", "/foobar", &[]), Some("ns/p/4")),
            (("GET", "/foo/bar", &[]), Some("ns/p/2")),
            (("GET", "/foo/bar/baz", &[]), Some("ns/p/2")),
            (("GET", "/foo/barbaz", &[]), Some("ns/p/1")),
            (("GET", "/foo/123", &[]), Some("ns/p/3")),
            (("GET", "/foo/123/x", &[]), Some("ns/p/1")),
            (("GET", "/other?x=1", &[]), Some("ns/p/4")),
        ],
    );

    // After the path: a method match, then more header matches, then more query matches.
    n += run(
        "method, headers, query",
        &listener("http", 8080, None),
        vec![
            route("ns", "m")
                .rule(prefix("/api").header("x-a", "1"))
                .rule(prefix("/api").method("POST"))
                .rule(prefix("/api").header("x-a", "1").header("x-b", "2"))
                .rule(prefix("/api").query("q", "a"))
                .rule(
                    prefix("/api")
                        .header("x-a", "1")
                        .query("q", "a")
                        .query("r", "b"),
                )
                .rule(prefix("/api").header("x-a", "1").query("q", "a"))
                .rule(prefix("/api"))
                .rule(prefix("/api/v1")),
        ],
        &[
            (("POST", "/api", &["x-a: 1", "x-b: 2"]), Some("ns/m/1")),
            (("GET", "/api", &["x-a: 1", "x-b: 2"]), Some("ns/m/2")),
            (("GET", "/api?q=a&r=b", &["x-a: 1"]), Some("ns/m/4")),
            (("GET", "/api?q=a", &["x-a: 1"]), Some("ns/m/5")),
            (("GET", "/api?q=a", &[]), Some("ns/m/3")),
            (("GET", "/api", &["x-a: 1"]), Some("ns/m/0")),
            (("GET", "/api?q=b", &[]), Some("ns/m/6")),
            (("GET", "/api", &["X-A: 1"]), Some("ns/m/0")),
            (("GET", "/api?q=%61", &[]), Some("ns/m/3")),
            (("GET", "/api", &["x-a: 2"]), Some("ns/m/6")),
            // The longer prefix outranks the method match.
            (("POST", "/api/v1", &[]), Some("ns/m/7")),
            (("GET", "/nothing", &[]), None),
        ],
    );

    // Ties across routes: the oldest, then `namespace/name` as one string; within a route,
    // the first rule.
    n += run(
        "route age",
        &listener("http", 8080, None),
        vec![
            route("b", "z").created(1000).rule(prefix("/t")),
            route("a", "a").created(2000).rule(prefix("/t")),
        ],
        &[(("GET", "/t", &[]), Some("b/z/0"))],
    );
    n += run(
        "route name",
        &listener("http", 8080, None),
        vec![
            route("a", "r1").created(5).rule(prefix("/u")),
            route("a", "r0").created(5).rule(prefix("/u")),
            route("a", "b-x").rule(prefix("/w")),
            route("a-b", "a").rule(prefix("/w")),
        ],
        &[
            (("GET", "/u", &[]), Some("a/r0/0")),
            (("GET", "/w", &[]), Some("a-b/a/0")),
        ],
    );
    n += run(
        "rule order",
        &listener("http", 8080, None),
        vec![
            route("ns", "ro")
                .rule(prefix("/v"))
                .rule(prefix("/v"))
                .rule(exact("/v")),
        ],
        &[
            (("GET", "/v/x", &[]), Some("ns/ro/0")),
            (("GET", "/v", &[]), Some("ns/ro/2")),
        ],
    );

    // Attachment: the parentRef names the Gateway (in its namespace), and its sectionName
    // and port, when given, are the listener's.
    let gw = |section: &str, port: u32| pb::ParentRef {
        section_name: section.into(),
        port,
        ..parent()
    };
    n += run(
        "attachment",
        &listener("http", 8080, None),
        vec![
            route("ns", "r1").parent(gw("http", 0)).rule(exact("/r1")),
            route("ns", "r2").parent(gw("https", 0)).rule(exact("/r2")),
            route("ns", "r3").parent(gw("", 8080)).rule(exact("/r3")),
            route("ns", "r4").parent(gw("", 8443)).rule(exact("/r4")),
            route("ns", "r5")
                .parent(pb::ParentRef {
                    name: "other".into(),
                    ..parent()
                })
                .rule(exact("/r5")),
            route("ns", "r6")
                .parent(pb::ParentRef {
                    namespace: "elsewhere".into(),
                    ..parent()
                })
                .rule(exact("/r6")),
            route("ns", "r7")
                .parent(gw("http", 8080))
                .rule(exact("/r7")),
        ],
        &[
            (("GET", "/r1", &[]), Some("ns/r1/0")),
            (("GET", "/r2", &[]), None),
            (("GET", "/r3", &[]), Some("ns/r3/0")),
            (("GET", "/r4", &[]), None),
            (("GET", "/r5", &[]), None),
            (("GET", "/r6", &[]), None),
            (("GET", "/r7", &[]), Some("ns/r7/0")),
        ],
    );

    // GRPCRoute: method matches arrive as paths; an exact method outranks a service-wide
    // match.
    n += run(
        "grpc",
        &listener("grpc", 8080, None),
        vec![
            route("ns", "svc")
                .grpc()
                .rule(prefix("/helloworld.Greeter/")),
            route("ns", "say")
                .grpc()
                .rule(exact("/helloworld.Greeter/SayHello")),
        ],
        &[
            (
                ("POST", "/helloworld.Greeter/SayHello", &[]),
                Some("ns/say/0"),
            ),
            (("POST", "/helloworld.Greeter/Other", &[]), Some("ns/svc/0")),
        ],
    );

    assert!(n >= 40, "only {n} cases");
}

#[test]
fn a_route_with_no_hostname_in_common_does_not_attach() {
    let l = listener("http", 8080, Some("api.example.com"));
    let r = Arc::new(
        Route::try_from(
            &route("ns", "x")
                .hosts(&["other.example.com"])
                .rule(prefix("/"))
                .0,
        )
        .unwrap(),
    );
    let table = RouteTable::build(&l, &[r]);
    assert!(table.routes().is_empty());
}

#[test]
fn selected_gives_rule_and_match() {
    let r = Arc::new(
        Route::try_from(&route("ns", "x").rule(exact("/a")).rule(prefix("/b")).0).unwrap(),
    );
    let table = RouteTable::build(&listener("http", 8080, None), &[r]);
    let s = table
        .select(&Method::GET, &"/b/c".parse().unwrap(), &HeaderMap::new())
        .unwrap();
    assert_eq!(s.rule_index, 1);
    assert_eq!(s.matched().and_then(|m| m.path.prefix()), Some("/b"));
}

#[test]
fn many_routes_and_hosts_select_the_right_one() {
    // 2000 routes over 500 exact hosts, a wildcard and a catch-all, 5 rules each.
    let mut routes = Vec::new();
    for i in 0..2000 {
        let mut r = route("ns", &format!("r{i:03}")).hosts(&[&format!("h{}.example.com", i % 500)]);
        for j in 0..5 {
            r = r.rule(exact(&format!("/r{i}/{j}")));
        }
        routes.push(r);
    }
    routes.push(
        route("ns", "wild")
            .hosts(&["*.example.com"])
            .rule(prefix("/")),
    );
    routes.push(route("ns", "all").rule(prefix("/")));
    let l = listener("http", 8080, None);
    let n = run(
        "scale",
        &l,
        routes,
        &[
            (
                ("GET", "/r137/4", &["host: h137.example.com"]),
                Some("ns/r137/4"),
            ),
            (
                ("GET", "/r137/4", &["host: h138.example.com"]),
                Some("ns/wild/0"),
            ),
            (("GET", "/r137/4", &["host: example.org"]), Some("ns/all/0")),
        ],
    );
    assert_eq!(n, 3);
}

#[test]
fn tables_and_selections_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<RouteTable>();
    send_sync::<super::Selected>();
}
