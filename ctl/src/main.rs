//! `weftctl`: see the library crate for the commands.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use weft_ctl::{connect::ControlArgs, render::Format};
use weft_proto::discovery::v1::ResourceType;

/// Operate a Weft mesh: validate configuration offline, inspect the control plane and its
/// connected agents and gateways, dump what a node's agent receives.
#[derive(Debug, Parser)]
#[command(name = "weftctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check YAML configuration files and directories offline, with the control plane's own
    /// parser and validator. Prints every problem with its file, 0-based document index and
    /// field path; exits 1 if any document is invalid.
    Validate {
        /// Files or directories (directories are read recursively for *.yaml and *.yml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show the control plane (version, uptime, configuration version, rejected reloads)
    /// and each connected agent and gateway with the versions it ACKed and its last NACK.
    Status {
        #[command(flatten)]
        control: ControlArgs,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: StatusFormat,
    },
    /// Configuration as the control plane serves it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the snapshot the control plane would send a new agent on NODE.
    Dump {
        /// The node name.
        #[arg(long)]
        node: String,
        /// Only these resource types (repeatable); all when absent.
        #[arg(long = "type", value_enum)]
        types: Vec<TypeArg>,
        #[command(flatten)]
        control: ControlArgs,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
        output: DumpFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DumpFormat {
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TypeArg {
    Workload,
    Service,
    Policy,
    Route,
    Listener,
    ApiRoute,
    Consumer,
    Plan,
}

impl From<TypeArg> for ResourceType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::Workload => ResourceType::Workload,
            TypeArg::Service => ResourceType::Service,
            TypeArg::Policy => ResourceType::Policy,
            TypeArg::Route => ResourceType::Route,
            TypeArg::Listener => ResourceType::Listener,
            TypeArg::ApiRoute => ResourceType::ApiRoute,
            TypeArg::Consumer => ResourceType::Consumer,
            TypeArg::Plan => ResourceType::Plan,
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            // Most messages already quote their cause; add only causes not yet shown.
            let mut message = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { paths } => {
            let report = weft_ctl::validate::validate(&paths);
            print!("{}", report.text);
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Status { control, output } => {
            let format = match output {
                StatusFormat::Table => Format::Table,
                StatusFormat::Json => Format::Json,
            };
            let out = runtime()?.block_on(weft_ctl::status::status(&control, format))?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command:
                ConfigCommand::Dump {
                    node,
                    types,
                    control,
                    output,
                },
        } => {
            let format = match output {
                DumpFormat::Json => Format::Json,
                DumpFormat::Yaml => Format::Yaml,
            };
            let types: Vec<ResourceType> = types.into_iter().map(Into::into).collect();
            let out = runtime()?.block_on(weft_ctl::dump::dump(&control, &node, &types, format))?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}
