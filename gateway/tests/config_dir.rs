//! The gateway binary in `--config-dir` mode, on loopback, against real backends, with curl.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_route_to_a_backend_and_a_route_added_takes_effect() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write(dir.path(), "gateway.yaml", &gateway_doc(port, None));
    write(
        dir.path(),
        "backends.yaml",
        &format!(
            "{}---\n{}",
            backend_doc("one", &format!("http://{}", one.addr)),
            backend_doc("two", &format!("http://{}", two.addr))
        ),
    );
    write(
        dir.path(),
        "route-one.yaml",
        &route_doc("one", "/one", "one"),
    );
    let gw = Gateway::spawn(&["--config-dir", dir.path().to_str().unwrap()]);
    gw.wait_ready();
    let base = format!("http://127.0.0.1:{port}");

    // HTTP/1.1; a client's consumer header never reaches the backend.
    let (status, body) = curl(&[
        "-H",
        "x-weft-consumer: demo/mallory",
        "-H",
        "baggage: a=1,weft-consumer=demo/mallory",
        &format!("{base}/one/x?q=1"),
    ]);
    assert_eq!(status, 200, "{body}\n{}", gw.log());
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["backend"], "one");
    assert_eq!(echo["path"], "/one/x?q=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert!(echo["headers"].get("x-weft-consumer").is_none(), "{body}");
    assert_eq!(echo["headers"]["baggage"], "a=1");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    assert!(
        echo["headers"]["forwarded"]
            .as_str()
            .unwrap()
            .starts_with("for=127.0.0.1;proto=http")
    );

    // h2c with prior knowledge.
    let (status, version, body) =
        curl_version(&["--http2-prior-knowledge", &format!("{base}/one/h2")]);
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");

    // No route: 404. An escaping path: 400. `//` and `.` are normalised before matching.
    assert_eq!(curl(&[&format!("{base}/two/x")]).0, 404);
    assert_eq!(
        curl(&["--path-as-is", &format!("{base}/one/../../etc/passwd")]).0,
        400
    );
    let (status, body) = curl(&["--path-as-is", &format!("{base}//one/./a//b")]);
    assert_eq!(status, 200);
    assert!(body.contains("\"path\":\"/one/a/b\""), "{body}");

    // A route added takes effect; a bad document keeps the last good configuration.
    let generation = gw.config()["snapshot"]["generation"].as_u64().unwrap();
    write(
        dir.path(),
        "route-two.yaml",
        &route_doc("two", "/two", "two"),
    );
    gw.wait_generation(generation + 1);
    let (status, body) = curl(&[&format!("{base}/two/x")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"backend\":\"two\""));
    write(
        dir.path(),
        "bad.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad, namespace: demo}\nspec: {parentRefs: [{name: edge}], rules: [{matches: [{path: {type: Exact, value: nope}}]}]}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.config()["last_error"].is_null() {
        assert!(
            Instant::now() < deadline,
            "bad document not reported\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_error = gw.config()["last_error"].as_str().unwrap().to_string();
    assert!(last_error.contains("bad.yaml"), "{last_error}");
    assert!(
        gw.log().contains("bad.yaml"),
        "the error is logged with its file"
    );
    assert_eq!(
        curl(&[&format!("{base}/two/x")]).0,
        200,
        "the last good configuration stays"
    );
    assert_eq!(
        curl(&[&format!("http://{}/healthz/ready", gw.readiness)]).0,
        200
    );

    // The access log: one JSON object per line on stdout.
    let access: Vec<serde_json::Value> = gw
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        access
            .iter()
            .any(|v| v["route"] == "demo/one" && v["status"] == 200),
        "no JSON access line\n{}",
        gw.log()
    );

    // Analytics counted the requests.
    let (status, body) = curl(&[&format!("http://{}/analytics?since=0", gw.admin)]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("demo/one"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_picks_the_certificate_by_sni_and_speaks_h2_by_alpn() {
    let backend = Backend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let (http_port, https_port) = (free_port(), free_port());
    let (a_cert, a_key) = self_signed(&["a.example.com"]);
    let (b_cert, b_key) = self_signed(&["*.b.example.com"]);
    write(
        dir.path(),
        "gateway.yaml",
        &gateway_doc(http_port, Some((https_port, &["cert-a", "cert-b"]))),
    );
    write(
        dir.path(),
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            secret_doc("cert-a", &a_cert, &a_key),
            secret_doc("cert-b", &b_cert, &b_key)
        ),
    );
    write(
        dir.path(),
        "backend.yaml",
        &backend_doc("one", &format!("http://{}", backend.addr)),
    );
    write(dir.path(), "route.yaml", &route_doc("one", "/", "one"));
    let certs = tempfile::tempdir().unwrap();
    let a_pem = certs.path().join("a.pem");
    let b_pem = certs.path().join("b.pem");
    std::fs::write(&a_pem, &a_cert).unwrap();
    std::fs::write(&b_pem, &b_cert).unwrap();
    let gw = Gateway::spawn(&["--config-dir", dir.path().to_str().unwrap()]);
    gw.wait_ready();

    let get = |host: &str, ca: &std::path::Path| {
        let (status, version, _) = curl_version(&[
            "--http2",
            "--resolve",
            &format!("{host}:{https_port}:127.0.0.1"),
            "--cacert",
            ca.to_str().unwrap(),
            &format!("https://{host}:{https_port}/x"),
        ]);
        (status, version)
    };
    // Exact name: a's certificate, over h2.
    let (status, version) = get("a.example.com", &a_pem);
    assert_eq!(status, 200, "{version}\n{}", gw.log());
    assert_eq!(version, "2");
    // Wildcard name: b's certificate (a's CA does not verify it).
    assert_eq!(get("x.b.example.com", &b_pem).0, 200);
    assert_eq!(
        get("x.b.example.com", &a_pem).0,
        0,
        "a's certificate must not be presented"
    );
    // An unknown name gets the first certificate (the default).
    assert_eq!(
        get("other.example.com", &a_pem).0,
        0,
        "the name does not match, but the chain verifies only for a"
    );
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{https_port}"),
            "-servername",
            "other.example.com",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let a_body: String = a_cert.lines().filter(|l| !l.starts_with("-----")).collect();
    let presented: String = text.lines().collect();
    assert!(
        presented.contains(&a_body),
        "the default is a's certificate: {text}"
    );
    // HTTP/1.1 over TLS too.
    let (status, version, _) = curl_version(&[
        "--http1.1",
        "--resolve",
        &format!("a.example.com:{https_port}:127.0.0.1"),
        "--cacert",
        a_pem.to_str().unwrap(),
        &format!("https://a.example.com:{https_port}/x"),
    ]);
    assert_eq!((status, version.as_str()), (200, "1.1"));

    // The certificate is swapped in place when its Secret changes.
    let (c_cert, c_key) = self_signed(&["a.example.com"]);
    let c_pem = certs.path().join("c.pem");
    std::fs::write(&c_pem, &c_cert).unwrap();
    let generation = gw.config()["snapshot"]["generation"].as_u64().unwrap();
    write(
        dir.path(),
        "secrets.yaml",
        &format!(
            "{}---\n{}",
            secret_doc("cert-a", &c_cert, &c_key),
            secret_doc("cert-b", &b_cert, &b_key)
        ),
    );
    gw.wait_generation(generation + 1);
    assert_eq!(get("a.example.com", &c_pem).0, 200);
    assert_eq!(get("a.example.com", &a_pem).0, 0);
}

const DEMO_KEY_SHA256: &str = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_plans_and_https_backends_are_wired_into_the_pipeline() {
    let (cert, key) = self_signed(&["localhost"]);
    let backend = Backend::start_tls("secure", &cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write(dir.path(), "gateway.yaml", &gateway_doc(port, None));
    let indented: String = cert.lines().map(|l| format!("    {l}\n")).collect();
    write(
        dir.path(),
        "backend.yaml",
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Backend\nmetadata: {{name: secure, namespace: demo}}\nspec:\n  url: \"https://localhost:{}\"\n  caCertificate: |\n{indented}",
            backend.addr.port()
        ),
    );
    write(
        dir.path(),
        "route.yaml",
        &route_doc("api", "/api", "secure"),
    );
    write(
        dir.path(),
        "policy.yaml",
        &format!(
            "apiVersion: weft.dev/v1alpha1\nkind: ApiPolicy\nmetadata: {{name: api, namespace: demo}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]\n  apiKey: {{}}\n---\napiVersion: weft.dev/v1alpha1\nkind: Consumer\nmetadata: {{name: alice, namespace: demo}}\nspec: {{apiKeySha256: [\"{DEMO_KEY_SHA256}\"], plan: gold}}\n---\napiVersion: weft.dev/v1alpha1\nkind: Plan\nmetadata: {{name: gold, namespace: demo}}\nspec: {{limits: {{perHour: 2}}}}\n"
        ),
    );
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::spawn(&[
        "--config-dir",
        dir.path().to_str().unwrap(),
        "--state-dir",
        state.path().to_str().unwrap(),
    ]);
    gw.wait_ready();
    let url = format!("http://127.0.0.1:{port}/api/x");

    // No credential: 401 with a challenge.
    let out = std::process::Command::new("curl")
        .args(["-s", "-i", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}\n{}", gw.log());
    assert!(text.contains("www-authenticate"), "{text}");
    // A wrong key: 401.
    assert_eq!(curl(&["-H", "x-api-key: nope", &url]).0, 401);

    // The key: 200 over TLS to the backend, as alice, the key stripped.
    let (status, body) = curl(&[
        "-H",
        "x-api-key: demo-key",
        "-H",
        "x-weft-consumer: demo/mallory",
        &url,
    ]);
    assert_eq!(status, 200, "{body}\n{}", gw.log());
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["backend"], "secure");
    assert_eq!(echo["headers"]["x-weft-consumer"], "demo/alice");
    assert_eq!(echo["headers"]["baggage"], "weft-consumer=demo/alice");
    assert!(echo["headers"].get("x-api-key").is_none(), "{body}");
    assert_eq!(curl(&["-H", "x-api-key: demo-key", &url]).0, 200);
    // The plan allows two an hour: the third gets 429 with its headers.
    let out = std::process::Command::new("curl")
        .args(["-s", "-i", "-H", "x-api-key: demo-key", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 429"), "{text}\n{}", gw.log());
    assert!(
        text.contains("retry-after:") && text.contains("ratelimit-policy:"),
        "{text}"
    );

    // The analytics saw the consumer.
    let (_, analytics) = curl(&[&format!("http://{}/analytics?since=0", gw.admin)]);
    assert!(analytics.contains("demo/alice"), "{analytics}");
    let (_, metrics) = curl(&[&format!("http://{}/metrics", gw.metrics)]);
    assert!(metrics.contains("weft_gateway_requests_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_reach_their_backend_over_http2() {
    let backend = Backend::start("greeter").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write(dir.path(), "gateway.yaml", &gateway_doc(port, None));
    write(
        dir.path(),
        "backend.yaml",
        &backend_doc("greeter", &format!("http://{}", backend.addr)),
    );
    write(
        dir.path(),
        "grpc.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: greeter, namespace: demo}\nspec:\n  parentRefs: [{name: edge}]\n  rules: [{matches: [{method: {service: helloworld.Greeter, method: SayHello}}], backendRefs: [{group: weft.dev, kind: Backend, name: greeter}]}]\n",
    );
    let gw = Gateway::spawn(&["--config-dir", dir.path().to_str().unwrap()]);
    gw.wait_ready();
    let base = format!("http://127.0.0.1:{port}");
    let (status, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "--data-binary",
        "",
        &format!("{base}/helloworld.Greeter/SayHello"),
    ]);
    assert_eq!(status, 200, "{body}\n{}", gw.log());
    assert!(
        body.contains("\"version\":\"HTTP/2.0\""),
        "the backend is spoken to in HTTP/2: {body}"
    );
    assert!(
        body.contains("\"path\":\"/helloworld.Greeter/SayHello\""),
        "{body}"
    );
    assert_eq!(
        curl(&[
            "--http2-prior-knowledge",
            &format!("{base}/helloworld.Greeter/Other")
        ])
        .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_retries_timeouts_and_upstream_errors_answer_as_envoy_does() {
    let main = Backend::start("main").await;
    let mirror = Backend::start("mirror").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let dead = free_port();
    write(dir.path(), "gateway.yaml", &gateway_doc(port, None));
    write(
        dir.path(),
        "backends.yaml",
        &format!(
            "{}---\n{}---\n{}",
            backend_doc("main", &format!("http://{}", main.addr)),
            backend_doc("mirror", &format!("http://{}", mirror.addr)),
            backend_doc("dead", &format!("http://127.0.0.1:{dead}")),
        ),
    );
    write(dir.path(), "routes.yaml", "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: demo}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /mirrored}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {group: weft.dev, kind: Backend, name: mirror}}}]
    backendRefs: [{group: weft.dev, kind: Backend, name: main}]
  - matches: [{path: {type: PathPrefix, value: /status}}]
    retry: {attempts: 2, codes: [503], backoff: 10ms}
    backendRefs: [{group: weft.dev, kind: Backend, name: main}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 3s, backendRequest: 300ms}
    backendRefs: [{group: weft.dev, kind: Backend, name: main}]
  - matches: [{path: {type: PathPrefix, value: /dead}}]
    backendRefs: [{group: weft.dev, kind: Backend, name: dead}]
  - matches: [{path: {type: PathPrefix, value: /zero}}]
    backendRefs: [{group: weft.dev, kind: Backend, name: main, weight: 0}]
");
    let gw = Gateway::spawn(&["--config-dir", dir.path().to_str().unwrap()]);
    gw.wait_ready();
    let base = format!("http://127.0.0.1:{port}");
    let count = |b: &Backend| b.requests.load(std::sync::atomic::Ordering::Relaxed);

    // A mirror gets a copy; the client gets the main backend's answer.
    let (status, body) = curl(&[&format!("{base}/mirrored/x")]);
    assert_eq!(status, 200, "{body}\n{}", gw.log());
    assert!(body.contains("\"backend\":\"main\""));
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&mirror) == 0 {
        assert!(Instant::now() < deadline, "the mirror got nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 503 is retried twice, then answered.
    let before = count(&main);
    assert_eq!(curl(&[&format!("{base}/status/503")]).0, 503);
    assert_eq!(count(&main) - before, 3, "one attempt and two retries");
    // 500 is not in the list: one attempt.
    let before = count(&main);
    assert_eq!(curl(&[&format!("{base}/status/500")]).0, 500);
    assert_eq!(count(&main) - before, 1);

    // The backend takes 1.5 s, the attempt may take 300 ms: 504.
    let started = Instant::now();
    assert_eq!(curl(&[&format!("{base}/slow")]).0, 504);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    // Nothing listens: 502. All weights 0: 500.
    assert_eq!(curl(&[&format!("{base}/dead")]).0, 502);
    assert_eq!(curl(&[&format!("{base}/zero")]).0, 500);
}
