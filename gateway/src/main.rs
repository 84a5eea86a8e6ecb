use std::io::IsTerminal as _;

use clap::Parser as _;
use tracing_subscriber::{
    EnvFilter, layer::SubscriberExt as _, reload, util::SubscriberInitExt as _,
};
use weft_gateway::{app, config::Config};

/// Without RUST_LOG: info.
const DEFAULT_LOG_FILTER: &str = "info";

fn main() {
    let config = Config::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
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
        eprintln!("weft-gateway: cannot set up logging: {err}");
        std::process::exit(1);
    }
    let set_log_level: weft_gateway::admin::SetLogLevel = Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("bad filter {level:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    if let Err(err) = app::run(config, set_log_level) {
        eprintln!("weft-gateway: {}", weft_link::error_chain(&err));
        std::process::exit(1);
    }
}
