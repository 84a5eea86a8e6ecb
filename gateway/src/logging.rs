//! Logging as the agent sets it up (`weft_link::logging`: RUST_LOG, `--log-format`, a
//! reloadable filter for the admin `/logging`), plus the access log: events of target
//! `access` are written to stdout as their message alone, one JSON object per line whatever
//! the log format, so a log pipeline can read them without unwrapping.

use weft_link::logging::Logging;

use crate::admin::SetLogLevel;

/// The access log's tracing target.
pub const ACCESS_TARGET: &str = "access";

/// Installs the subscriber; returns the admin's log-level switch.
pub fn init(json: bool) -> Result<SetLogLevel, String> {
    let logging = Logging {
        json,
        bare_target: Some(ACCESS_TARGET),
        ..Logging::default()
    };
    Ok(logging.init()?.set_log_level)
}
