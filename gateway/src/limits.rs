//! Plans, rate limits and quotas.
