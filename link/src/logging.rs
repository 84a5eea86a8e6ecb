//! Logging as the mesh binaries set it up: the filter from RUST_LOG (info without it), text
//! for people or JSON for log pipelines (`--log-format`), and a switch that replaces the
//! filter at run time (the admin `/logging`). Optionally, the events of one target are
//! written to stdout as their message alone, one line each, whatever the log format: the
//! gateway's access log, which a log pipeline then reads without unwrapping.

use std::io::IsTerminal as _;

use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{LevelFilter, filter_fn},
    fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter, format},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    reload,
    util::SubscriberInitExt as _,
};

/// Changes the log filter; returns the error to show the operator.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Without RUST_LOG: info.
const DEFAULT_LOG_FILTER: &str = "info";

/// How a binary logs.
#[derive(Debug, Clone, Copy)]
pub struct Logging {
    /// JSON objects (one per line) instead of text.
    pub json: bool,
    /// Events of this target go to stdout as their bare message, and only there.
    pub bare_target: Option<&'static str>,
    /// Turns a filter given at run time into the one installed (RUST_LOG is taken as it is).
    pub reload_filter: fn(&str) -> String,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            json: false,
            bare_target: None,
            reload_filter: str::to_string,
        }
    }
}

/// What [`Logging::init`] installed.
pub struct Installed {
    /// The run-time switch of the filter.
    pub set_log_level: SetLogLevel,
    /// The most verbose level the starting filter lets through.
    pub max_level: Option<LevelFilter>,
}

impl Logging {
    /// Installs the global subscriber; the bare target's lines go to stdout.
    pub fn init(self) -> Result<Installed, String> {
        self.init_with_bare_writer(std::io::stdout)
    }

    /// Installs the global subscriber; the bare target's lines go to `bare_writer`.
    pub fn init_with_bare_writer<W>(self, bare_writer: W) -> Result<Installed, String>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
        let max_level = filter.max_level_hint();
        let (filter, handle) = reload::Layer::new(filter);
        // Colours only for a person at a terminal, never in a file or a log collector.
        let ansi = std::io::stdout().is_terminal();
        let bare_target = self.bare_target;
        let bare = bare_target.map(|target| {
            tracing_subscriber::fmt::layer()
                .event_format(MessageOnly)
                .with_writer(bare_writer)
                .with_filter(filter_fn(move |m| m.target() == target))
        });
        let not_bare = filter_fn(move |m| Some(m.target()) != bare_target);
        let registry = tracing_subscriber::registry().with(filter).with(bare);
        let init = if self.json {
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_filter(not_bare),
                )
                .try_init()
        } else {
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(ansi)
                        .with_filter(not_bare),
                )
                .try_init()
        };
        init.map_err(|e| e.to_string())?;
        let reload_filter = self.reload_filter;
        let set_log_level: SetLogLevel = Box::new(move |level: &str| {
            let filter = EnvFilter::try_new(reload_filter(level))
                .map_err(|e| format!("bad filter {level:?}: {e}"))?;
            handle.reload(filter).map_err(|e| e.to_string())
        });
        Ok(Installed {
            set_log_level,
            max_level,
        })
    }
}

/// Writes an event's message and nothing else, then a newline.
pub struct MessageOnly;

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
