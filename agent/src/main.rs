use std::io::IsTerminal as _;

use clap::Parser as _;
use tracing_subscriber::{
    EnvFilter, filter::LevelFilter, layer::SubscriberExt as _, reload, util::SubscriberInitExt as _,
};
use weft_agent::{app, config::Config};

/// Without RUST_LOG: info.
const DEFAULT_LOG_FILTER: &str = "info";
/// Appended to every filter that does not mention aya itself: aya's loader warns at length
/// about a union name in bpf-linker 0.10's BTF, which is harmless for these program types.
const QUIET_AYA: &str = "aya=error";

/// The operator's filter with aya's loader quietened unless they asked about it.
fn log_filter(spec: &str) -> String {
    if spec.contains("aya") {
        spec.to_string()
    } else {
        format!("{spec},{QUIET_AYA}")
    }
}

fn main() {
    let config = Config::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let kernel_log_level = aya_log_level(filter.max_level_hint());
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only for a person at a terminal, never in a file or a log collector.
    let ansi = std::io::stdout().is_terminal();
    let init = if config.log_format == "json" {
        registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
            .try_init()
    };
    if let Err(err) = init {
        eprintln!("weft-agent: cannot set up logging: {err}");
        std::process::exit(1);
    }
    let set_log_level: weft_agent::admin::SetLogLevel = Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(log_filter(level))
            .map_err(|e| format!("bad filter {level:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    if let Err(err) = app::run(config, set_log_level, kernel_log_level) {
        // One line: the error and its causes.
        let line = weft_link::error_chain(&err);
        eprintln!("weft-agent: {line}");
        std::process::exit(1);
    }
}

/// aya-log's level numbering (0 off, 1 error .. 5 trace) for the most verbose level enabled.
fn aya_log_level(max: Option<LevelFilter>) -> u8 {
    match max {
        Some(LevelFilter::OFF) => 0,
        Some(LevelFilter::ERROR) => 1,
        Some(LevelFilter::WARN) => 2,
        Some(LevelFilter::INFO) => 3,
        Some(LevelFilter::DEBUG) => 4,
        _ => 5,
    }
}
