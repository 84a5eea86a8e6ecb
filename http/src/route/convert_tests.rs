//! Conversion errors and defaults.

use weft_proto::discovery::v1 as pb;

use super::{BackendKind, Route};

fn api_route(rule: pb::RouteRule) -> pb::ApiRoute {
    pb::ApiRoute {
        name: "demo".into(),
        namespace: "ns".into(),
        kind: pb::ApiRouteKind::Http.into(),
        rules: vec![rule],
        ..Default::default()
    }
}

#[test]
fn errors_name_the_route_and_field() {
    let bad = api_route(pb::RouteRule {
        matches: vec![pb::RouteMatch {
            path: Some(pb::PathMatch {
                r#type: pb::MatchType::RegularExpression.into(),
                value: "(".into(),
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let err = Route::try_from(&bad).unwrap_err().to_string();
    assert!(
        err.contains("ns/demo") && err.contains("rules[0].matches[0].path.value"),
        "{err}"
    );

    let bad = api_route(pb::RouteRule {
        backends: vec![pb::BackendRef {
            kind: "Service".into(),
            name: "b".into(),
            port: 70000,
            ..Default::default()
        }],
        ..Default::default()
    });
    let err = Route::try_from(&bad).unwrap_err().to_string();
    assert!(err.contains("rules[0].backends[0].port"), "{err}");
}

#[test]
fn huge_regexes_are_refused() {
    let bad = api_route(pb::RouteRule {
        matches: vec![pb::RouteMatch {
            headers: vec![pb::HeaderMatch {
                r#type: pb::MatchType::RegularExpression.into(),
                name: "x".into(),
                value: "((a{100}){100}){100}".into(),
            }],
            ..Default::default()
        }],
        ..Default::default()
    });
    let err = Route::try_from(&bad).unwrap_err().to_string();
    assert!(err.contains("headers[0].value"), "{err}");
}

#[test]
fn replace_prefix_needs_one_path_prefix() {
    let rewrite = pb::RouteFilter {
        filter: Some(pb::route_filter::Filter::UrlRewrite(pb::UrlRewrite {
            hostname: String::new(),
            path: Some(pb::PathModifier {
                r#type: pb::PathModifierType::Prefix.into(),
                value: "/".into(),
            }),
        })),
    };
    let exact = pb::RouteMatch {
        path: Some(pb::PathMatch {
            r#type: pb::MatchType::Exact.into(),
            value: "/a".into(),
        }),
        ..Default::default()
    };
    let bad = api_route(pb::RouteRule {
        matches: vec![exact],
        filters: vec![rewrite.clone()],
        ..Default::default()
    });
    assert!(Route::try_from(&bad).is_err());
    let ok = api_route(pb::RouteRule {
        filters: vec![rewrite],
        ..Default::default()
    });
    assert!(Route::try_from(&ok).is_ok());
}

#[test]
fn defaults_are_filled_in() {
    let r = pb::ApiRoute {
        parents: vec![pb::ParentRef {
            kind: "Gateway".into(),
            name: "edge".into(),
            ..Default::default()
        }],
        ..api_route(pb::RouteRule {
            backends: vec![pb::BackendRef {
                name: "echo".into(),
                port: 80,
                weight: 1,
                ..Default::default()
            }],
            ..Default::default()
        })
    };
    let route = Route::try_from(&r).unwrap();
    assert_eq!(route.parents[0].namespace, "ns");
    assert_eq!(route.parents[0].section_name, None);
    assert_eq!(route.rules[0].matches.len(), 1);
    assert_eq!(
        route.rules[0].backends[0].kind,
        BackendKind::Service {
            namespace: "ns".into(),
            name: "echo".into(),
            port: 80
        }
    );
}
