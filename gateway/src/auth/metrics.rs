//! Authentication's Prometheus metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// The `provider` label: a JWT provider's name from the configuration (never from a token).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

/// Counters of authentication; cheap to clone (shared series).
#[derive(Clone, Debug, Default)]
pub struct AuthMetrics {
    jwks_fetch_errors: Family<ProviderLabels, Counter>,
}

impl AuthMetrics {
    /// Registers `weft_gateway_jwks_fetch_errors_total{provider}` in an unprefixed registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_gateway_jwks_fetch_errors",
            "JWKS fetches or reads that failed (the last good keys stay in use)",
            self.jwks_fetch_errors.clone(),
        );
    }

    pub(crate) fn jwks_fetch_error(&self, provider: &str) {
        self.jwks_fetch_errors
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .inc();
    }

    /// Failed fetches of a provider so far (for tests and the admin page).
    pub fn jwks_fetch_errors(&self, provider: &str) -> u64 {
        self.jwks_fetch_errors
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .get()
    }
}
