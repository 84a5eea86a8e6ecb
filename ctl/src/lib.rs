//! `weftctl`, the operator's command-line interface: status, configuration dumps,
//! validation, policy tracing and flow observation.
