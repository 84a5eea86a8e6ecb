use clap::Parser as _;
use tracing_subscriber::filter::LevelFilter;
use weft_agent::{app, config::Config};
use weft_link::logging::Logging;

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
    let logging = Logging {
        json: config.log_format == "json",
        bare_target: None,
        reload_filter: log_filter,
    };
    let logs = match logging.init() {
        Ok(logs) => logs,
        Err(err) => {
            eprintln!("weft-agent: cannot set up logging: {err}");
            std::process::exit(1);
        }
    };
    let kernel_log_level = aya_log_level(logs.max_level);
    let set_log_level = logs.set_log_level;
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
