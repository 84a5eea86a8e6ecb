//! Running a benchmark binary that prints its own table: the table is echoed, kept as
//! `DIR/<name>.md`, and the binary writes its figures to `DIR/<name>.json`.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

/// Runs `bin --json DIR/<name>.json [--quick]`, echoes its table and writes it to
/// `DIR/<name>.md`; `what` names the benchmark in messages.
pub fn run(bin: &Path, out: &Path, name: &str, quick: bool, what: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join(format!("{name}.json"));
    let mut command = Command::new(bin);
    command.arg("--json").arg(&json);
    if quick {
        command.arg("--quick");
    }
    println!("bench: {}", weft_tests::testbed::cmd::display(&command));
    let output = command
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let table = String::from_utf8_lossy(&output.stdout);
    print!("{table}");
    let md = out.join(format!("{name}.md"));
    std::fs::write(&md, format!("```text\n{table}```\n"))
        .with_context(|| format!("writing {}", md.display()))?;
    if !output.status.success() {
        bail!(
            "the {what} benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    println!("bench: {what} report: {}", md.display());
    Ok(())
}
