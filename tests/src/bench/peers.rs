//! The other proxies, run from Debian's packages as the same thing Weft's cross-node path
//! will be: a mutual-TLS (TLS 1.3) TCP tunnel from a proxy on the client's node to a proxy on
//! the server's node. The harness makes its own CA and certificates with the openssl command
//! line.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::env::{Where, nginx_argv, wait_listening, write_file};
use super::error::{Error, Result};
use super::{NODE1_POD_GATEWAY, NODE2_FABRIC, Peer, Service};
use crate::testbed::{Background, Testbed, cmd};

/// The name in the server-side proxies' certificate, which the client side checks.
const SERVER_NAME: &str = "weft-bench-server";
/// The client-side proxies' certificate name.
const CLIENT_NAME: &str = "weft-bench-client";

/// A private CA, a server certificate (for the server-side proxies) and a client
/// certificate (for the client-side proxies), P-256, made with the openssl command line.
pub fn certificates(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let key = |name: &str| dir.join(format!("{name}.key")).display().to_string();
    let crt = |name: &str| dir.join(format!("{name}.crt")).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key("ca"),
        "-out",
        &crt("ca"),
        "-days",
        "7",
        "-subj",
        "/CN=weft-bench-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])?;
    for (name, usage) in [(SERVER_NAME, "serverAuth"), (CLIENT_NAME, "clientAuth")] {
        let csr = dir.join(format!("{name}.csr")).display().to_string();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key(name),
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ])?;
        let ext = write_file(
            dir,
            &format!("{name}.ext"),
            &format!("subjectAltName=DNS:{name}\nextendedKeyUsage={usage}\n"),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &crt("ca"),
            "-CAkey",
            &key("ca"),
            "-CAcreateserial",
            "-out",
            &crt(name),
            "-days",
            "7",
            "-extfile",
            &ext.display().to_string(),
        ])?;
        // haproxy wants the certificate and its key in one file.
        let pem = dir.join(format!("{name}.pem"));
        let both = [crt(name), key(name)]
            .iter()
            .map(|p| std::fs::read_to_string(p).map_err(Error::io("reading", p)))
            .collect::<Result<Vec<_>>>()?
            .concat();
        std::fs::write(&pem, both).map_err(Error::io("writing", &pem))?;
    }
    Ok(())
}

fn openssl(args: &[&str]) -> Result<()> {
    cmd::run(Command::new("openssl").args(args))?;
    Ok(())
}

/// Starts `peer`'s two instances, with their files in `dir`, and waits until both listen.
pub fn start(tb: &Testbed, peer: Peer, dir: &Path, tls: &Path) -> Result<Vec<Background>> {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(Error::io("creating", &tmp))?;
    let mut procs = Vec::new();
    for side in [Side::Server, Side::Client] {
        let (node, text) = match peer {
            Peer::Haproxy => (side.node(), haproxy_conf(side, tls)),
            Peer::Nginx => (side.node(), nginx_conf(side, tls, dir)),
        };
        let ext = if peer == Peer::Haproxy { "cfg" } else { "conf" };
        let conf = write_file(
            dir,
            &format!("{}-{}.{ext}", peer.name(), side.name()),
            &text,
        )?;
        let conf = conf.display().to_string();
        let argv: Vec<String> = match peer {
            // -db: stay in the foreground, so that the testbed follows the process.
            Peer::Haproxy => vec!["haproxy".into(), "-db".into(), "-f".into(), conf],
            Peer::Nginx => nginx_argv(Path::new(&conf), dir),
        };
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let process = tb.spawn_node(node, &argv)?;
        for service in Service::ALL {
            let addr = side.listen(peer, service);
            wait_listening(tb, &Where::Node(node), &process, addr)?;
        }
        procs.push(process);
    }
    Ok(procs)
}

/// Which end of a peer tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// On node-1: plaintext in from the client pod, TLS out to node-2.
    Client,
    /// On node-2: TLS in, plaintext out to the server pod.
    Server,
}

impl Side {
    pub fn node(self) -> &'static str {
        match self {
            Side::Client => "node-1",
            Side::Server => "node-2",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }

    /// Where this side listens for `service`.
    pub fn listen(self, peer: Peer, service: Service) -> SocketAddr {
        match self {
            Side::Client => (NODE1_POD_GATEWAY, peer.client_port(service)).into(),
            Side::Server => (NODE2_FABRIC, peer.server_port(service)).into(),
        }
    }
}

/// The certificate and key files of `name` in `tls`.
fn files(tls: &Path, name: &str) -> (String, String, String) {
    let f = |ext: &str| tls.join(format!("{name}.{ext}")).display().to_string();
    (f("crt"), f("key"), f("pem"))
}

/// haproxy in TCP mode, one thread (as the agent runs with one worker thread).
pub fn haproxy_conf(side: Side, tls: &Path) -> String {
    let ca = tls.join("ca.crt").display().to_string();
    let mut text = String::from(
        "# A benchmark peer, written by `cargo xtask bench`.\n\
         global\n  nbthread 1\n  maxconn 8192\n\
         \x20 ssl-default-bind-options ssl-min-ver TLSv1.3\n\
         \x20 ssl-default-server-options ssl-min-ver TLSv1.3\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n",
    );
    for service in Service::ALL {
        let name = format!("{service:?}").to_lowercase();
        let listen = side.listen(Peer::Haproxy, service);
        let (bind, server) = match side {
            Side::Client => {
                let (_, _, pem) = files(tls, CLIENT_NAME);
                let upstream = Side::Server.listen(Peer::Haproxy, service);
                (
                    format!("bind {listen}"),
                    format!(
                        "server tunnel {upstream} ssl crt {pem} ca-file {ca} verify required \
                         verifyhost {SERVER_NAME} sni str({SERVER_NAME})"
                    ),
                )
            }
            Side::Server => {
                let (_, _, pem) = files(tls, SERVER_NAME);
                let app = SocketAddr::from((super::POD_2C, service.port()));
                (
                    format!("bind {listen} ssl crt {pem} ca-file {ca} verify required"),
                    format!("server app {app}"),
                )
            }
        };
        text.push_str(&format!(
            "frontend {name}_in\n  {bind}\n  default_backend {name}_out\n\
             backend {name}_out\n  {server}\n"
        ));
    }
    text
}

/// nginx's stream module, one worker process.
pub fn nginx_conf(side: Side, tls: &Path, dir: &Path) -> String {
    let ca = tls.join("ca.crt").display().to_string();
    let prefix = format!("{}/nginx-{}", dir.display(), side.name());
    let mut servers = String::new();
    for service in Service::ALL {
        let listen = side.listen(Peer::Nginx, service);
        let block = match side {
            Side::Client => {
                let (crt, key, _) = files(tls, CLIENT_NAME);
                let upstream = Side::Server.listen(Peer::Nginx, service);
                format!(
                    "listen {listen} backlog=8192;\n    proxy_pass {upstream};\n    proxy_ssl on;\n    \
                     proxy_ssl_protocols TLSv1.3;\n    proxy_ssl_certificate {crt};\n    \
                     proxy_ssl_certificate_key {key};\n    proxy_ssl_trusted_certificate {ca};\n    \
                     proxy_ssl_verify on;\n    proxy_ssl_name {SERVER_NAME};\n    \
                     proxy_ssl_server_name on;\n    proxy_ssl_session_reuse on;"
                )
            }
            Side::Server => {
                let (crt, key, _) = files(tls, SERVER_NAME);
                let app = SocketAddr::from((super::POD_2C, service.port()));
                format!(
                    "listen {listen} ssl backlog=8192;\n    ssl_protocols TLSv1.3;\n    \
                     ssl_certificate {crt};\n    ssl_certificate_key {key};\n    \
                     ssl_client_certificate {ca};\n    ssl_verify_client on;\n    \
                     proxy_pass {app};"
                )
            }
        };
        servers.push_str(&format!("  server {{\n    {block}\n  }}\n"));
    }
    format!(
        "# A benchmark peer, written by `cargo xtask bench`.\n\
         load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         daemon off;\nworker_processes 1;\nuser root;\npid {prefix}.pid;\n\
         error_log {prefix}.error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         stream {{\n  proxy_connect_timeout 5s;\n  proxy_timeout 600s;\n{servers}}}\n"
    )
}
