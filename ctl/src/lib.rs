//! `weftctl`, the operator's command-line interface to a Weft mesh:
//!
//! - `weftctl validate PATH...` checks configuration files offline with the control plane's
//!   own parser and validator ([`validate`]);
//! - `weftctl status` shows the control plane and its connected agents and gateways
//!   ([`status`]);
//! - `weftctl config dump --node NODE` prints what the control plane would send an agent
//!   on that node ([`dump`]).
//!
//! Policy tracing and flow observation come later.

pub mod connect;
pub mod dump;
pub mod render;
pub mod status;
pub mod validate;

/// Errors of the commands that talk to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot read the CA certificate {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the operator credential {path}: {source}")]
    CredentialFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid control plane address {address:?}: expected host:port or https://host:port")]
    Address { address: String },
    #[error(
        "cannot connect to the control plane at {address}: {detail} (is it running, and does --ca-cert hold its root?)"
    )]
    Connect { address: String, detail: String },
    #[error("the control plane answered {code}: {message}{hint}")]
    Rpc {
        code: tonic::Code,
        message: String,
        hint: &'static str,
    },
    #[error("cannot render the output: {0}")]
    Render(String),
}

impl From<tonic::Status> for CtlError {
    fn from(status: tonic::Status) -> Self {
        let hint = match status.code() {
            // The control plane's message already says which credential to present.
            tonic::Code::Unauthenticated if !status.message().contains("--cert") => {
                " (give weftctl an operator credential with --cert/--key or WEFTCTL_CERT and \
                 WEFTCTL_KEY)"
            }
            tonic::Code::PermissionDenied => {
                " (is --cert an operator credential? node and gateway credentials cannot \
                 do this)"
            }
            _ => "",
        };
        CtlError::Rpc {
            code: status.code(),
            message: status.message().to_string(),
            hint,
        }
    }
}
