//! Prometheus metrics of the control plane, served on `--metrics-addr` (port 15020 by
//! convention, ARCHITECTURE §7) at `/metrics`.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::{debug, warn};
use weft_proto::discovery::v1::ClientKind;

use crate::server::Store;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied`, `unchanged`, `rejected` (errors) or `refused_empty` (the source became
    /// empty and `--allow-empty-config` is off).
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `agent`, `gateway` or `ctl`.
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignLabels {
    /// `issued`, `unauthenticated` (no node credential), `invalid` (a malformed identity or
    /// CSR), `denied` (the identity is not on the caller's node) or `failed` (signing failed).
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `Subscribe`, `Status` or `ConfigDump`.
    pub call: &'static str,
}

/// The control plane's metrics. Clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub reloads: Family<ReloadLabels, Counter>,
    pub certificate_requests: Family<SignLabels, Counter>,
    pub nacks: Counter,
    pub resyncs: Counter,
    pub config_version: Gauge,
    pub clients: Family<KindLabels, Gauge>,
    pub unauthenticated: Family<CallLabels, Counter>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("weft_control");
        r.register(
            "config_reloads",
            "Configuration re-reads by outcome",
            self.reloads.clone(),
        );
        r.register("nacks", "Versions rejected by clients", self.nacks.clone());
        r.register(
            "certificate_requests",
            "Workload certificate requests to the CA, by outcome",
            self.certificate_requests.clone(),
        );
        r.register(
            "subscriber_resyncs",
            "Snapshots sent to subscribers that fell behind",
            self.resyncs.clone(),
        );
        r.register(
            "config_version",
            "The configuration version in force",
            self.config_version.clone(),
        );
        r.register(
            "unauthenticated_calls",
            "Discovery calls refused for want of a credential, by call",
            self.unauthenticated.clone(),
        );
        r.register(
            "connected_clients",
            "Clients with an open discovery stream",
            self.clients.clone(),
        );
    }

    pub fn unauthenticated(&self, call: &'static str) {
        self.unauthenticated
            .get_or_create(&CallLabels { call })
            .inc();
    }

    pub fn reload(&self, result: &str) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: result.to_string(),
            })
            .inc();
    }
}

fn kind_label(kind: ClientKind) -> &'static str {
    match kind {
        ClientKind::Agent => "agent",
        ClientKind::Gateway => "gateway",
        ClientKind::Ctl => "ctl",
        ClientKind::Unspecified => "unknown",
    }
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, store: Arc<Store>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let registry = registry.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&req, &registry, &store);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, registry: &Registry, store: &Store) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "try /metrics\n".to_string());
    }
    // Gauges that mirror the store are refreshed at scrape time rather than on every
    // change, so the hot paths carry no metrics bookkeeping for them.
    let status = store.status(env!("CARGO_PKG_VERSION"));
    let metrics = store.metrics();
    metrics.config_version.set(status.config_version as i64);
    for kind in [ClientKind::Agent, ClientKind::Gateway, ClientKind::Ctl] {
        let count = status.clients.iter().filter(|c| c.kind() == kind).count();
        metrics
            .clients
            .get_or_create(&KindLabels {
                kind: kind_label(kind).to_string(),
            })
            .set(count as i64);
    }
    let mut body = String::new();
    match encode(&mut body, registry) {
        Ok(()) => text(StatusCode::OK, body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding failed: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
