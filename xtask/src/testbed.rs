//! `cargo xtask testbed up|status|exec|apply|delete|down`.

use std::path::PathBuf;

use std::ffi::OsString;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use weft_tests::testbed::{self, AgentConfig, Config, Testbed, cmd, topology};

use crate::{run, setup};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the agent and bring a testbed up with one agent per node.
    Up(UpArgs),
    /// Show the nodes, agents and pods of a testbed.
    Status(StatusArgs),
    /// Run a command inside a pod (its network namespace and cgroup); its exit code is
    /// passed through.
    Exec(ExecArgs),
    /// Add YAML documents to the control plane's configuration (hot reload, no restart); a
    /// file replaces an earlier one of the same name.
    Apply(FilesArgs),
    /// Remove files added with `apply`, by file name.
    Delete(FilesArgs),
    /// Take a testbed down: agents, processes, namespaces, cgroups, pins, state.
    Down(NameArg),
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The testbed's name, prefix of everything it creates.
    #[arg(long, default_value = topology::DEFAULT_NAME)]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = topology::DEFAULT_NODES)]
    pub nodes: u32,
    /// Number of pods per node.
    #[arg(long, default_value_t = topology::DEFAULT_PODS_PER_NODE)]
    pub pods: u32,
    #[command(flatten)]
    pub name: NameArg,
    /// Run a release build of the agent.
    #[arg(long)]
    pub release: bool,
    /// A flag for every agent, e.g. `--agent-arg=--worker-threads=1` (repeatable).
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Also run the edge gateway (weft-gateway) in its own namespace on the fabric,
    /// configured by the control plane.
    #[arg(long)]
    pub gateway: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub name: NameArg,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// The pod, e.g. pod-1a.
    pub pod: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// YAML files (multi-document, Kubernetes-shaped).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => up(&args),
        Command::Status(args) => status(&args),
        Command::Exec(args) => exec(&args),
        Command::Apply(args) => apply(&args),
        Command::Delete(args) => delete(&args),
        Command::Down(args) => down(&args),
    }
}

/// Set-up, agent build, `up`; prints a summary.
pub fn up(args: &UpArgs) -> anyhow::Result<()> {
    // Bad arguments fail before the set-up and the build, not after.
    topology::validate_name(&args.name.name)?;
    topology::validate_size(args.nodes, args.pods)?;
    setup::ensure()?;
    let bin = run::build_agent(args.release)?;
    if args.gateway {
        run::build_gateway(args.release)?;
    }
    let mut agent = AgentConfig::new(bin);
    agent.extra_args.clone_from(&args.agent_args);
    let mut config = Config::named(&args.name.name)
        .size(args.nodes, args.pods)
        .agent(agent);
    if args.gateway {
        config = config.with_gateway();
    }
    let tb = bring_up(&config)?;
    print_summary(&tb);
    Ok(())
}

pub fn bring_up(config: &Config) -> anyhow::Result<Testbed> {
    println!(
        "testbed {}: bringing up {} nodes x {} pods...",
        config.name, config.nodes, config.pods_per_node
    );
    Testbed::up(config).with_context(|| format!("bringing testbed {} up failed", config.name))
}

fn print_summary(tb: &Testbed) {
    println!(
        "testbed {} is up: {} nodes, {} pods, every agent ready (state in {})",
        tb.name(),
        tb.nodes().len(),
        tb.pods().len(),
        tb.state_dir().display()
    );
    for node in tb.nodes() {
        let pods: Vec<String> = tb
            .pods()
            .iter()
            .filter(|p| p.node == node.name)
            .map(|p| format!("{} {} {}", p.name, p.ipv4, p.ipv6))
            .collect();
        println!("  {} {}: {}", node.name, node.ipv4, pods.join(", "));
    }
    if let Ok(gw) = tb.gateway() {
        println!(
            "  {} {} (netns {}, log {})",
            gw.name,
            gw.ipv4,
            gw.netns,
            weft_tests::testbed::gateway::gateway_log(&gw.dir).display()
        );
    }
    let flag = if tb.name() == topology::DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {}", tb.name())
    };
    println!(
        "next: cargo xtask testbed status{flag} / cargo xtask testbed exec{flag} pod-1a -- ip addr / \
         cargo xtask testbed down{flag}"
    );
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let tb = Testbed::load(&args.name.name)?;
    if args.json {
        let text = serde_json::to_string_pretty(&status_json(&tb))?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "testbed {} (state in {})",
        tb.name(),
        tb.state_dir().display()
    );
    let mut nodes = vec![row(&[
        "NODE", "NETNS", "IP", "IPV6", "ADMIN", "METRICS", "AGENT",
    ])];
    for n in tb.nodes() {
        let agent = match n.agent {
            Some(a) if a.is_alive() => format!("pid {} running", a.pid),
            Some(a) => format!("pid {} DEAD", a.pid),
            None => "not started".to_owned(),
        };
        nodes.push(vec![
            n.name.clone(),
            n.netns.clone(),
            n.ipv4.to_string(),
            n.ipv6.to_string(),
            n.admin_addr.to_string(),
            n.metrics_addr.to_string(),
            agent,
        ]);
    }
    if let Ok(gw) = tb.gateway() {
        let process = match gw.process {
            Some(p) if p.is_alive() => format!("gateway pid {} running", p.pid),
            Some(p) => format!("gateway pid {} DEAD", p.pid),
            None => "gateway not started".to_owned(),
        };
        nodes.push(vec![
            gw.name.clone(),
            gw.netns.clone(),
            gw.ipv4.to_string(),
            gw.ipv6.to_string(),
            gw.admin_addr.to_string(),
            gw.metrics_addr.to_string(),
            process,
        ]);
    }
    print_table(&nodes);
    println!();
    let control = match tb.control_process() {
        Some(p) if p.is_alive() => format!("pid {} running", p.pid),
        Some(p) => format!("pid {} DEAD", p.pid),
        None => "not started".to_owned(),
    };
    println!(
        "control plane {} ({control}), config {} (applied: {})",
        tb.control_url(),
        tb.config_dir().display(),
        if tb.applied_files().is_empty() {
            "nothing".to_owned()
        } else {
            tb.applied_files().join(", ")
        },
    );
    if let Some(node) = tb.nodes().first() {
        println!(
            "  weftctl: nsenter --net={} target/debug/weftctl status --control {} --ca-cert {} \
             --cert {} --key {}",
            node.netns_path.display(),
            tb.control_url(),
            tb.control_ca().display(),
            tb.operator_cert().display(),
            tb.operator_key().display()
        );
    }
    println!();
    let mut pods = vec![row(&[
        "POD",
        "NAMESPACE",
        "SERVICE ACCOUNT",
        "LABELS",
        "NODE",
        "IP",
        "IPV6",
        "NETNS",
        "CGROUP",
    ])];
    for p in tb.pods() {
        let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pods.push(vec![
            p.name.clone(),
            p.namespace.clone(),
            p.service_account.clone(),
            labels.join(","),
            p.node.clone(),
            p.ipv4.to_string(),
            p.ipv6.to_string(),
            p.netns.clone(),
            p.cgroup.display().to_string(),
        ]);
    }
    print_table(&pods);
    Ok(())
}

fn status_json(tb: &Testbed) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = tb
        .nodes()
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name,
                "netns": n.netns,
                "ip": n.ipv4,
                "ipv6": n.ipv6,
                "admin_addr": n.admin_addr,
                "metrics_addr": n.metrics_addr,
                "readiness_addr": n.readiness_addr,
                "agent_pid": n.agent.map(|a| a.pid),
                "agent_alive": n.agent.is_some_and(|a| a.is_alive()),
            })
        })
        .collect();
    let pods: Vec<serde_json::Value> = tb
        .pods()
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "uid": p.uid,
                "namespace": p.namespace,
                "service_account": p.service_account,
                "labels": p.labels,
                "node": p.node,
                "ip": p.ipv4,
                "ipv6": p.ipv6,
                "netns": p.netns,
                "cgroup": p.cgroup,
            })
        })
        .collect();
    let gateway = tb.gateway().ok().map(|gw| {
        serde_json::json!({
            "name": gw.name,
            "netns": gw.netns,
            "ip": gw.ipv4,
            "ipv6": gw.ipv6,
            "admin_addr": gw.admin_addr,
            "metrics_addr": gw.metrics_addr,
            "readiness_addr": gw.readiness_addr,
            "state_dir": gw.dir,
            "log": weft_tests::testbed::gateway::gateway_log(&gw.dir),
            "bin": gw.bin,
            "pid": gw.process.map(|p| p.pid),
            "alive": tb.gateway_alive(),
        })
    });
    serde_json::json!({
        "name": tb.name(),
        "state_dir": tb.state_dir(),
        "control": {
            "address": tb.control_url(),
            "ca_cert": tb.control_ca(),
            "operator_cert": tb.operator_cert(),
            "operator_key": tb.operator_key(),
            "config_dir": tb.config_dir(),
            "applied": tb.applied_files(),
            "metrics_addr": tb.control_metrics_addr(),
            "pid": tb.control_process().map(|p| p.pid),
            "alive": tb.control_alive(),
        },
        "nodes": nodes,
        "gateway": gateway,
        "pods": pods,
    })
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn exec(args: &ExecArgs) -> anyhow::Result<()> {
    testbed::require_root("running a command in a pod")?;
    let tb = Testbed::load(&args.name.name)?;
    let status = tb.exec_interactive(&args.pod, &args.command)?;
    std::process::exit(cmd::exit_code(status));
}

fn apply(args: &FilesArgs) -> anyhow::Result<()> {
    let tb = Testbed::load(&args.name.name)?;
    for name in tb.apply(&args.files)? {
        println!(
            "applied {name} (the control plane reloads it; `weftctl validate` checks a file first)"
        );
    }
    Ok(())
}

fn delete(args: &FilesArgs) -> anyhow::Result<()> {
    let tb = Testbed::load(&args.name.name)?;
    for name in tb.delete(&args.files)? {
        println!("deleted {name}");
    }
    Ok(())
}

fn down(args: &NameArg) -> anyhow::Result<()> {
    testbed::down(&args.name)
        .with_context(|| format!("taking testbed {} down failed", args.name))?;
    println!("testbed {} is down", args.name);
    Ok(())
}
