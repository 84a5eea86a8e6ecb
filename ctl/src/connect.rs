//! A TLS channel to the control plane for one-off calls.

use std::{path::PathBuf, time::Duration};

use tonic::transport::Channel;
use weft_link::control::ClientIdentity;
use weft_proto::discovery::v1::discovery_client::DiscoveryClient;

use crate::CtlError;

/// The control plane's default address (ARCHITECTURE §7).
pub const DEFAULT_CONTROL: &str = "https://127.0.0.1:15012";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the control plane is and how to trust it.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Control plane address, host:port or https://host:port.
    #[arg(long, env = "WEFT_CONTROL", default_value = DEFAULT_CONTROL)]
    pub control: String,
    /// Root CA certificate (PEM) the control plane's certificate chains to, e.g. the
    /// control plane's `--state-dir`/root-cert.pem.
    #[arg(long, env = "WEFT_CA_CERT")]
    pub ca_cert: PathBuf,
    /// Name to verify in the control plane's certificate, when the address is not one of
    /// its SANs.
    #[arg(long)]
    pub server_name: Option<String>,
    /// The operator credential's certificate (PEM) presented to the control plane, which
    /// answers nobody without one: `weft-control operator-credential --name <you>
    /// --out-dir <dir>` writes <dir>/operator-cert.pem.
    #[arg(long, env = "WEFTCTL_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The operator credential's private key (PEM), <dir>/operator-key.pem.
    #[arg(long, env = "WEFTCTL_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl ControlArgs {
    /// The address with its scheme.
    pub fn url(&self) -> String {
        if self.control.contains("://") {
            self.control.clone()
        } else {
            format!("https://{}", self.control)
        }
    }

    pub async fn connect(&self) -> Result<DiscoveryClient<Channel>, CtlError> {
        let pem = std::fs::read_to_string(&self.ca_cert).map_err(|source| CtlError::CaFile {
            path: self.ca_cert.clone(),
            source,
        })?;
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let read = |path: &PathBuf| {
                    std::fs::read_to_string(path).map_err(|source| CtlError::CredentialFile {
                        path: path.clone(),
                        source,
                    })
                };
                Some(ClientIdentity::new(read(cert)?, read(key)?))
            }
            _ => None,
        };
        let url = self.url();
        let endpoint = weft_link::control::endpoint_with_identity(
            &url,
            &pem,
            self.server_name.as_deref(),
            identity.as_ref(),
            CONNECT_TIMEOUT,
        )
        .map_err(|e| match e {
            weft_link::control::ClientError::Address { .. } => CtlError::Address {
                address: self.control.clone(),
            },
            other => CtlError::Connect {
                address: url.clone(),
                detail: weft_link::error_chain(&other),
            },
        })?
        .timeout(CALL_TIMEOUT);
        let channel = endpoint.connect().await.map_err(|e| CtlError::Connect {
            address: url,
            detail: weft_link::error_chain(&e),
        })?;
        Ok(DiscoveryClient::new(channel))
    }
}
