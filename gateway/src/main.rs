use clap::Parser as _;
use weft_gateway::{app, config::Config, logging};

fn main() {
    let config = Config::parse();
    let set_log_level = match logging::init(config.log_format == "json") {
        Ok(set) => set,
        Err(err) => {
            eprintln!("weft-gateway: cannot set up logging: {err}");
            std::process::exit(1);
        }
    };
    if let Err(err) = app::run(config, set_log_level) {
        // One line: the error and its causes.
        eprintln!("weft-gateway: {}", weft_link::error_chain(&err));
        std::process::exit(1);
    }
}
