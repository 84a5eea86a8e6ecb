//! Test helpers: real keys (aws-lc-rs), hand-assembled tokens, and a JWKS served over real
//! HTTPS from 127.0.0.1 with a test CA.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
        RsaKeyPair,
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use weft_proto::discovery::v1 as pb;

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn client() -> SocketAddr {
    "192.0.2.1:40000".parse().unwrap()
}

/// A signing key of one of the three algorithms, with its `kid`.
pub(crate) enum TestKey {
    Rsa(String, RsaKeyPair),
    P256(String, EcdsaKeyPair),
    Ed(String, Ed25519KeyPair),
}

impl TestKey {
    pub(crate) fn rsa(kid: &str) -> Self {
        TestKey::Rsa(kid.into(), RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
    }
    pub(crate) fn p256(kid: &str) -> Self {
        TestKey::P256(
            kid.into(),
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        )
    }
    pub(crate) fn ed25519(kid: &str) -> Self {
        TestKey::Ed(kid.into(), Ed25519KeyPair::generate().unwrap())
    }

    pub(crate) fn kid(&self) -> &str {
        match self {
            TestKey::Rsa(k, _) | TestKey::P256(k, _) | TestKey::Ed(k, _) => k,
        }
    }

    pub(crate) fn alg(&self) -> &'static str {
        match self {
            TestKey::Rsa(..) => "RS256",
            TestKey::P256(..) => "ES256",
            TestKey::Ed(..) => "EdDSA",
        }
    }

    /// The public key as a JWK (RFC 7517/7518/8037).
    pub(crate) fn jwk(&self) -> Value {
        match self {
            TestKey::Rsa(kid, key) => {
                let (n, e) = rsa_public_components(key.public_key().as_ref());
                json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&n), "e": b64(&e)})
            }
            TestKey::P256(kid, key) => {
                let point = key.public_key().as_ref();
                assert_eq!(point.len(), 65);
                json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            TestKey::Ed(kid, key) => {
                json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(key.public_key().as_ref())})
            }
        }
    }

    /// The public key bytes an attacker could find (for the HS256 key-confusion test).
    pub(crate) fn public_bytes(&self) -> Vec<u8> {
        match self {
            TestKey::Rsa(_, key) => key.public_key().as_ref().to_vec(),
            TestKey::P256(_, key) => key.public_key().as_ref().to_vec(),
            TestKey::Ed(_, key) => key.public_key().as_ref().to_vec(),
        }
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            TestKey::Rsa(_, key) => {
                let mut sig = vec![0u8; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
                    .unwrap();
                sig
            }
            TestKey::P256(_, key) => key
                .sign(&SystemRandom::new(), message)
                .unwrap()
                .as_ref()
                .to_vec(),
            TestKey::Ed(_, key) => key.sign(message).as_ref().to_vec(),
        }
    }

    /// A token with the usual header (`alg`, `kid`, `typ`).
    pub(crate) fn token(&self, claims: &Value) -> String {
        self.token_with_header(
            &json!({"alg": self.alg(), "kid": self.kid(), "typ": "JWT"}),
            claims,
        )
    }

    pub(crate) fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.sign(message.as_bytes());
        format!("{message}.{}", b64(&sig))
    }
}

/// `n` and `e` of a PKCS#1 RSAPublicKey (SEQUENCE { INTEGER n, INTEGER e }).
fn rsa_public_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let (len, header) = if input[1] & 0x80 == 0 {
            (input[1] as usize, 2)
        } else {
            let n = (input[1] & 0x7f) as usize;
            let mut len = 0usize;
            for b in &input[2..2 + n] {
                len = len << 8 | *b as usize;
            }
            (len, 2 + n)
        };
        (tag, &input[header..header + len], &input[header + len..])
    }
    let (tag, seq, _) = tlv(der);
    assert_eq!(tag, 0x30);
    let (_, n, rest) = tlv(seq);
    let (_, e, _) = tlv(rest);
    let strip = |v: &[u8]| {
        let first = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        v[first..].to_vec()
    };
    (strip(n), strip(e))
}

pub(crate) fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

pub(crate) const ISSUER: &str = "https://idp.example";
pub(crate) const AUDIENCE: &str = "demo";

/// Claims valid for an hour, for `sub`.
pub(crate) fn claims(sub: &str) -> Value {
    let now = now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 3600})
}

/// A provider of `ISSUER` for audience `AUDIENCE`; set one jwks field on the result.
pub(crate) fn provider(name: &str) -> pb::JwtProvider {
    pb::JwtProvider {
        name: name.into(),
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        claim_to_headers: vec![pb::ClaimToHeader {
            claim: "sub".into(),
            header: "x-user".into(),
        }],
        ..Default::default()
    }
}

pub(crate) fn policy(api_key: bool, providers: Vec<pb::JwtProvider>) -> pb::ApiPolicy {
    pb::ApiPolicy {
        name: "demo/demo-api".into(),
        api: "demo".into(),
        api_key: api_key.then(pb::ApiKeyAuth::default),
        jwt: (!providers.is_empty()).then_some(pb::JwtAuth { providers }),
        ..Default::default()
    }
}

pub(crate) fn consumer(name: &str, keys: &[&str], subjects: &[&str], plan: &str) -> pb::Consumer {
    pb::Consumer {
        name: name.into(),
        namespace: "demo".into(),
        api_key_sha256: keys
            .iter()
            .map(|k| crate::auth::KeyHash::of(k.as_bytes()).to_hex())
            .collect(),
        jwt_subjects: subjects.iter().map(|s| s.to_string()).collect(),
        plan: plan.into(),
    }
}

/// The head of a GET of `uri` with `headers`.
pub(crate) fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// === JWKS over HTTPS ===

/// What the test JWKS server does with a connection.
#[derive(Clone)]
pub(crate) enum Serve {
    Json(String),
    /// 200 with a body that is not JSON.
    Garbage,
    /// Accepts the TCP connection and never says anything.
    Hang,
}

pub(crate) struct JwksServer {
    pub(crate) addr: SocketAddr,
    pub(crate) ca_pem: String,
    mode: Arc<parking_lot::Mutex<Serve>>,
    pub(crate) connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub(crate) async fn start(mode: Serve) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weft test JWKS CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(parking_lot::Mutex::new(mode));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let mode = mode.clone();
            let connections = connections.clone();
            async move {
                let mut held = Vec::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let serve = mode.lock().clone();
                    if let Serve::Hang = serve {
                        held.push(tcp);
                        continue;
                    }
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let body = match serve {
                            Serve::Json(s) => s,
                            _ => "<html>surprise</html>".to_string(),
                        };
                        let service = hyper::service::service_fn(move |_req| {
                            let body = body.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    Response::builder()
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            }
        });
        JwksServer {
            addr,
            ca_pem: ca_cert.pem(),
            mode,
            connections,
            task,
        }
    }

    pub(crate) fn set(&self, mode: Serve) {
        *self.mode.lock() = mode;
    }

    pub(crate) fn uri(&self) -> String {
        format!("https://{}/.well-known/jwks.json", self.addr)
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
