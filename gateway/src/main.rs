use clap::Parser as _;
use weft_gateway::{app, config::Config, logging};

fn main() {
    let config = Config::parse();
    let (set_log_level, access_log) = match logging::init(config.log_format == "json") {
        Ok(init) => init,
        Err(err) => {
            eprintln!("weft-gateway: cannot set up logging: {err}");
            std::process::exit(1);
        }
    };
    let result = app::run(config, set_log_level);
    // Every access-log line still pending is written before the process ends.
    drop(access_log);
    if let Err(err) = result {
        // One line: the error and its causes.
        eprintln!("weft-gateway: {}", weft_link::error_chain(&err));
        std::process::exit(1);
    }
}
