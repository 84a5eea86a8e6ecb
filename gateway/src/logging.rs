//! Logging as the agent sets it up (RUST_LOG, `--log-format`, a reloadable filter for the
//! admin `/logging`), plus the access log: events of target `access` are written to stdout
//! as their message alone, one JSON object per line whatever the log format, so a log
//! pipeline can read them without unwrapping.

use std::io::IsTerminal as _;

use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::filter_fn,
    fmt::{FmtContext, FormatEvent, FormatFields, format},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    reload,
    util::SubscriberInitExt as _,
};

use crate::admin::SetLogLevel;

/// Without RUST_LOG: info.
const DEFAULT_LOG_FILTER: &str = "info";
/// The access log's tracing target.
pub const ACCESS_TARGET: &str = "access";

/// Installs the subscriber; returns the admin's log-level switch.
pub fn init(json: bool) -> Result<SetLogLevel, String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only for a person at a terminal, never in a file or a log collector.
    let ansi = std::io::stdout().is_terminal();
    let not_access = filter_fn(|m| m.target() != ACCESS_TARGET);
    let access = tracing_subscriber::fmt::layer()
        .event_format(MessageOnly)
        .with_filter(filter_fn(|m| m.target() == ACCESS_TARGET));
    let registry = tracing_subscriber::registry().with(filter).with(access);
    let init = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_filter(not_access),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_filter(not_access),
            )
            .try_init()
    };
    init.map_err(|e| e.to_string())?;
    Ok(Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("bad filter {level:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// Writes an event's message and nothing else, then a newline.
struct MessageOnly;

impl<S, N> FormatEvent<S, N> for MessageOnly
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut visitor = Message {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        writeln!(writer)
    }
}

struct Message<'a, 'w> {
    writer: &'a mut format::Writer<'w>,
    result: std::fmt::Result,
}

impl tracing::field::Visit for Message<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            // `format_args!` messages print as written under Debug.
            self.result = write!(self.writer, "{value:?}");
        }
    }
}
