//! Building blocks of the edge gateway's scenarios and of the demo: an HTTP server that
//! echoes what it received, the documents that publish an API through the gateway, and curl
//! through the gateway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::testbed::{Background, Error, Result, Testbed, gateway};

/// The port of the echo server in the backend pods.
pub const ECHO_PORT: u16 = 8000;
/// The gateway's plain HTTP listener port in these scenarios.
pub const HTTP_LISTENER_PORT: u16 = 8080;
/// The gateway's HTTPS listener port.
pub const HTTPS_LISTENER_PORT: u16 = 8443;
/// The header in which the gateway tells the backend who the consumer is; it always sets
/// it itself, dropping a client's copy.
pub const CONSUMER_HEADER: &str = "x-weft-consumer";
/// How long a configuration change gets to reach the gateway.
pub const CONFIG_WAIT: Duration = Duration::from_secs(20);
/// The namespace of the testbed's pods, and so of the scenarios' documents.
pub const NAMESPACE: &str = crate::testbed::topology::POD_NAMESPACE;

/// Starts an HTTP/1.1 server in `pod` on `port` (dual stack) that answers every request
/// with 200 and a JSON body naming the pod and echoing the method, path, headers (names in
/// lower case) and body length, and waits until it listens.
pub fn serve_echo(tb: &Testbed, pod: &str, port: u16) -> Result<Background> {
    let script = format!(
        r#"import http.server, json, socket
POD = {pod:?}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        headers = {{}}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = headers[k] + ", " + v if k in headers else v
        out = json.dumps({{"pod": POD, "method": self.command, "path": self.path,
                          "headers": headers, "body_bytes": len(body)}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = answer
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
S(("::", {port}), H).serve_forever()
"#
    );
    let server = tb.spawn(pod, &["python3", "-c", &script])?;
    tb.wait_for_tcp(
        pod,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(15),
    )?;
    Ok(server)
}

/// A `Gateway` named `edge` with an HTTP listener on [`HTTP_LISTENER_PORT`].
pub fn gateway_doc() -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, \
         namespace: {NAMESPACE}}}\nspec:\n  gatewayClassName: weft\n  listeners:\n  \
         - {{name: http, port: {HTTP_LISTENER_PORT}, protocol: HTTP}}\n"
    )
}

/// A Service `name` in front of `pod`'s `port`, with the VIP `vip`.
pub fn service_doc(name: &str, pod: &str, port: u16, vip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec:\n  selector: {{app: {pod}}}\n  clusterIP: {vip}\n  ports:\n  \
         - {{name: http, port: {port}, targetPort: {port}}}\n"
    )
}

/// An HTTPRoute `name` on the `edge` Gateway sending `prefix` to Service `service`:`port`.
pub fn http_route_doc(name: &str, prefix: &str, service: &str, port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, \
         namespace: {NAMESPACE}}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules:\n  \
         - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    \
         backendRefs: [{{name: {service}, port: {port}}}]\n"
    )
}

/// An ApiPolicy on HTTPRoute `route` asking for an API key (the default `x-api-key` header
/// or `apikey` query parameter) from a consumer on plan `plan`.
pub fn api_key_policy_doc(name: &str, route: &str, plan: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: ApiPolicy\nmetadata: {{name: {name}, namespace: \
         {NAMESPACE}}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: \
         HTTPRoute, name: {route}}}]\n  apiKey: {{}}\n  plans: [{plan}]\n"
    )
}

/// A Consumer `name` holding API key `key` (stored as its SHA-256), on plan `plan`.
pub fn consumer_doc(name: &str, key: &str, plan: &str) -> Result<String> {
    let hash = gateway::api_key_sha256(key)?;
    Ok(format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Consumer\nmetadata: {{name: {name}, namespace: \
         {NAMESPACE}}}\nspec: {{apiKeySha256: [\"{hash}\"], plan: {plan}}}\n"
    ))
}

/// A Plan `name` limited to `per_second` requests per second.
pub fn plan_doc(name: &str, per_second: u32) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Plan\nmetadata: {{name: {name}, namespace: \
         {NAMESPACE}}}\nspec: {{limits: {{perSecond: {per_second}}}}}\n"
    )
}

/// The demo's API (`cargo xtask demo`): the `edge` Gateway, a Service `demo` (VIP `vip`) in
/// front of pod-2a's server on [`crate::scenario::HTTP_PORT`], an HTTPRoute from `/demo/` to
/// it (the prefix rewritten to `/`), an ApiPolicy asking for an API key, and consumer `demo`
/// holding `key` (stored as its SHA-256) on plan `demo` of `per_second` requests per second.
pub fn demo_api_documents(key: &str, per_second: u32, vip: &str) -> Result<String> {
    let port = crate::scenario::HTTP_PORT;
    Ok([
        gateway_doc(),
        service_doc("demo", "pod-2a", port, vip),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: demo, \
             namespace: {NAMESPACE}}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules:\n  \
             - matches: [{{path: {{type: PathPrefix, value: /demo/}}}}]\n    filters:\n    \
             - type: URLRewrite\n      urlRewrite: {{path: {{type: ReplacePrefixMatch, \
             replacePrefixMatch: /}}}}\n    backendRefs: [{{name: demo, port: {port}}}]\n"
        ),
        api_key_policy_doc("demo-api", "demo", "demo"),
        plan_doc("demo", per_second),
        consumer_doc("demo", key, "demo")?,
    ]
    .join("---\n"))
}

/// `http://<gateway>:8080<path>`.
pub fn gateway_url(tb: &Testbed, path: &str) -> Result<String> {
    Ok(format!(
        "http://{}{path}",
        SocketAddr::new(tb.gateway_ip()?, HTTP_LISTENER_PORT)
    ))
}

/// What one curl through the gateway got.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Response headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// curl's stderr, for messages.
    pub stderr: String,
}

impl Reply {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (the echo server's), or `Null`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Parses `curl -sS -D - -o <body>` output: the header block(s) on stdout.
fn parse_reply(stdout: &str, body: String, stderr: String) -> Reply {
    // With 1xx interim answers there are several blocks: the last one counts.
    let block = stdout
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/"))
        .last()
        .unwrap_or("");
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body,
        stderr,
    }
}

/// Where a client runs.
#[derive(Debug, Clone, Copy)]
pub enum Client<'a> {
    /// A node's namespace, outside every pod (an edge client the mesh never captures).
    Node(&'a str),
    /// A pod (captured by its node's agent).
    Pod(&'a str),
    /// The gateway's own namespace (the client leg stays on loopback).
    Gateway,
}

/// Runs curl with `args` (URL included) at `client`, the response headers on stdout and
/// the body in a file; status 0 if curl got no answer.
pub fn curl(tb: &Testbed, client: Client<'_>, args: &[&str]) -> Result<Reply> {
    let body_file = tb.state_dir().join(format!(
        "curl-body-{}-{}",
        std::process::id(),
        BODY_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let body_arg = body_file.display().to_string();
    let mut argv = vec![
        "curl",
        "-sS",
        "-g",
        "--max-time",
        "10",
        "-D",
        "-",
        "-o",
        &body_arg,
    ];
    argv.extend_from_slice(args);
    let out: Output = match client {
        Client::Node(n) => tb.exec_node(n, &argv)?,
        Client::Pod(p) => tb.exec(p, &argv)?,
        Client::Gateway => tb.exec_gateway(&argv)?,
    };
    let body = std::fs::read_to_string(&body_file).unwrap_or_default();
    let _ = std::fs::remove_file(&body_file);
    Ok(parse_reply(
        &String::from_utf8_lossy(&out.stdout),
        body,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

static BODY_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sends `n` requests to `url` in one curl process over one keep-alive connection (a burst
/// of a few milliseconds), with `args` (headers) before the URLs; every reply, in order.
pub fn burst(
    tb: &Testbed,
    client: Client<'_>,
    args: &[&str],
    url: &str,
    n: usize,
) -> Result<Vec<Reply>> {
    let headers_file = tb.state_dir().join(format!(
        "curl-headers-{}-{}",
        std::process::id(),
        BODY_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let headers_arg = headers_file.display().to_string();
    let mut argv = vec!["curl", "-sS", "-g", "--max-time", "10", "-D", &headers_arg];
    argv.extend_from_slice(args);
    for _ in 0..n {
        argv.extend(["-o", "/dev/null", url]);
    }
    let out = match client {
        Client::Node(node) => tb.exec_node(node, &argv)?,
        Client::Pod(p) => tb.exec(p, &argv)?,
        Client::Gateway => tb.exec_gateway(&argv)?,
    };
    let text = std::fs::read_to_string(&headers_file).unwrap_or_default();
    let _ = std::fs::remove_file(&headers_file);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Ok(text
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/") && !b.starts_with("HTTP/1.1 100"))
        .map(|b| parse_reply(b, String::new(), stderr.clone()))
        .collect())
}

/// Sleeps until just after the next full second of the clock, so that a burst that
/// follows falls within one second of a limiter that counts per calendar second.
pub fn align_to_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let into = Duration::from_nanos(u64::from(now.subsec_nanos()));
    std::thread::sleep(Duration::from_secs(1) - into + Duration::from_millis(20));
}

/// Repeats `curl` until its status is `status` (the configuration has reached the gateway),
/// for up to [`CONFIG_WAIT`]; the matching reply, or an error with the last one seen.
pub fn curl_until(tb: &Testbed, client: Client<'_>, args: &[&str], status: u16) -> Result<Reply> {
    let deadline = Instant::now() + CONFIG_WAIT;
    loop {
        let reply = curl(tb, client, args)?;
        if reply.status == status {
            return Ok(reply);
        }
        if Instant::now() >= deadline {
            let log = tb
                .gateway_log()
                .map(|l| crate::testbed::state::tail(&l, 6))
                .unwrap_or_default();
            return Err(Error::Timeout {
                what: format!(
                    "HTTP {status} from `curl {}` (last: HTTP {} {:?} {}; gateway log tail:\n{log})",
                    args.join(" "),
                    reply.status,
                    reply.body.chars().take(300).collect::<String>(),
                    reply.stderr.trim()
                ),
                secs: CONFIG_WAIT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The gateway's address as a client reaches it.
pub fn gateway_addr(tb: &Testbed, port: u16) -> Result<SocketAddr> {
    let ip: IpAddr = tb.gateway_ip()?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_last_header_block() {
        let out = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\n\
                   Retry-After: 1\r\nRateLimit: \"default\";r=0;t=1\r\n\r\n";
        let r = parse_reply(out, String::new(), String::new());
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.header("ratelimit"), Some("\"default\";r=0;t=1"));
        assert_eq!(parse_reply("", String::new(), String::new()).status, 0);
    }
}
