//! The Kubernetes source (`--source kubernetes`): the kinds the file source reads, watched
//! in a cluster with kube-rs and turned into the same documents and resources.
//!
//! | watched | as | becomes |
//! |---|---|---|
//! | `v1 Node` | k8s-openapi type | the locality (`topology.kubernetes.io/region`, `/zone`) of the workloads on it |
//! | `v1 Pod` | k8s-openapi type | a `Workload` (uid, service account, node, IPs, labels, named TCP container ports, readiness from the `Ready` condition: none yet is not ready); pods without an IP yet, with `hostNetwork`, or finished are left out |
//! | `v1 Service` | k8s-openapi type | a `Service` (named target ports kept as names, resolved per endpoint; `trafficDistribution` or Istio's annotation) |
//! | `discovery.k8s.io/v1 EndpointSlice` | k8s-openapi type | the members of services without a selector; an address that is no pod's becomes a `TCP` workload. Slices the EndpointSlice controller derives from selectors are not read |
//! | `networking.k8s.io/v1 NetworkPolicy` | k8s-openapi type | `Policy` resources |
//! | `v1 Secret` of type `kubernetes.io/tls` | k8s-openapi type | listener certificates; only those a `weft` Gateway names are read |
//! | Istio `AuthorizationPolicy`, `PeerAuthentication`; Gateway API `HTTPRoute`, `GRPCRoute`, `Gateway` | `DynamicObject` | `Policy`, `Route`, `ApiRoute`, `Listener` |
//! | `weft.dev/v1alpha1` `Workload`, `Backend`, `ApiPolicy`, `Consumer`, `Plan` ([`crd`]) | `DynamicObject` | their resources |
//!
//! - [`translate`]: one object into one [`ParsedDocument`](super::ParsedDocument);
//! - [`assemble`]: every object into one configuration, skipping invalid objects one by one
//!   (the file source rejects the whole configuration instead; see that module for why);
//! - [`watch`]: the connection and the reflectors;
//! - [`crd`]: the `weft.dev` custom resources and the CRD YAML of `deploy/crds/`.

pub mod assemble;
pub mod crd;
pub mod translate;
pub mod watch;

pub use assemble::{Objects, assemble};
pub use watch::{KubernetesError, KubernetesOptions, KubernetesSource};
