//! A gRPC call through the edge gateway: a GRPCRoute to a mesh service, a real tonic client
//! (h2c with prior knowledge, from an edge node) and a real tonic server in a pod. The
//! messages are written by hand with prost's derive, so no protoc is needed.

#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use weft_tests::edge::{self, NAMESPACE};
use weft_tests::testbed::{Config, TestbedGuard};

const PREFIX: &str = "weft-e2e-gw";
const GREETER_PORT: u16 = 50051;
const GREETER_VIP: &str = "10.96.23.11";
const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// helloworld.HelloRequest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// helloworld.HelloReply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// helloworld.Greeter with one method, SayHello, as tonic-build would generate it.
#[derive(Clone)]
struct Greeter {
    pod: &'static str,
}

impl NamedService for Greeter {
    const NAME: &'static str = "helloworld.Greeter";
}

struct SayHello(&'static str);

impl UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<Response<HelloReply>, Status>;

    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        let pod = self.0;
        Box::pin(async move {
            Ok(Response::new(HelloReply {
                message: format!("hello {} from {pod}", request.into_inner().name),
            }))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for Greeter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let pod = self.pod;
        Box::pin(async move {
            if req.uri().path() == SAY_HELLO {
                let codec = tonic_prost::ProstCodec::<HelloReply, HelloRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.unary(SayHello(pod), req).await)
            } else {
                Ok(Status::unimplemented("no such method").into_http())
            }
        })
    }
}

/// Serves the greeter on `0.0.0.0:GREETER_PORT` inside the network namespace `netns`, on a
/// thread of its own for the rest of the test.
fn serve_greeter(netns: PathBuf, pod: &'static str) {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tonic::transport::Server::builder()
                .add_service(Greeter { pod })
                .serve(SocketAddr::from(([0, 0, 0, 0], GREETER_PORT)))
                .await
                .unwrap();
        });
    });
}

/// Calls `path` with a HelloRequest through `endpoint`, from inside `netns`.
fn call(netns: &std::path::Path, endpoint: &str, path: &'static str) -> Result<String, Status> {
    weft_tests::testbed::netns::in_netns(netns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .connect()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
            let reply: Response<HelloReply> = grpc
                .unary(
                    Request::new(HelloRequest {
                        name: "edge".to_owned(),
                    }),
                    http::uri::PathAndQuery::from_static(path),
                    codec,
                )
                .await?;
            Ok(reply.into_inner().message)
        })
    })
    .unwrap()
}

#[test]
fn a_grpc_call_passes_a_grpcroute_to_a_mesh_service() {
    common::require_root();
    let name = format!("{PREFIX}-grpc");
    let config = Config::named(&name)
        .size(2, 1)
        .agent(common::agent())
        .with_gateway();
    let tb = TestbedGuard::up(&config).unwrap_or_else(|e| panic!("bringing {name} up: {e}"));
    serve_greeter(tb.pod("pod-2a").unwrap().netns_path.clone(), "pod-2a");
    tb.wait_for_tcp(
        "pod-2a",
        SocketAddr::from(([127, 0, 0, 1], GREETER_PORT)),
        Duration::from_secs(10),
    )
    .unwrap();
    let docs = [
        edge::gateway_doc(),
        edge::service_doc("greeter", "pod-2a", GREETER_PORT, GREETER_VIP),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: \
             greeter, namespace: {NAMESPACE}}}\nspec:\n  parentRefs: [{{name: edge}}]\n  \
             rules:\n  - matches: [{{method: {{service: helloworld.Greeter, method: SayHello}}}}]\n    \
             backendRefs: [{{name: greeter, port: {GREETER_PORT}}}]\n"
        ),
    ]
    .join("---\n");
    tb.apply_yaml("greeter.yaml", &docs).unwrap();

    let edge_client = tb.node("node-1").unwrap().netns_path.clone();
    let endpoint = format!(
        "http://{}",
        edge::gateway_addr(&tb, edge::HTTP_LISTENER_PORT).unwrap()
    );
    let deadline = Instant::now() + edge::CONFIG_WAIT;
    let message = loop {
        match call(&edge_client, &endpoint, SAY_HELLO) {
            Ok(m) => break m,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!(
                "SayHello through the gateway failed: {e}; gateway log:\n{}",
                weft_tests::testbed::state::tail(&tb.gateway_log().unwrap(), 20)
            ),
        }
    };
    assert_eq!(message, "hello edge from pod-2a");
    // A method the route does not match is not routed.
    let other = call(&edge_client, &endpoint, "/helloworld.Greeter/SayGoodbye");
    assert!(
        other.is_err(),
        "an unmatched method must not reach the greeter: {other:?}"
    );
}
