//! `weftctl validate`: the control plane's own parsing and validation, offline.

use std::{fmt::Write, path::PathBuf};

use weft_control::config::load_paths;

/// The report to print, and whether the configuration is valid.
#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub ok: bool,
}

/// Validates the files and directories in `paths` as one configuration (so duplicates
/// across files are found), exactly as the control plane would load them.
pub fn validate(paths: &[PathBuf]) -> Report {
    let loaded = load_paths(paths);
    let mut text = String::new();
    for d in &loaded.diagnostics {
        let _ = writeln!(text, "{d}");
    }
    let errors = loaded.errors().count();
    let warnings = loaded.diagnostics.len() - errors;
    if errors > 0 {
        let _ = writeln!(
            text,
            "invalid: {errors} error(s), {warnings} warning(s) in {} file(s); the control plane would reject this configuration",
            loaded.files
        );
    } else {
        let _ = writeln!(
            text,
            "valid: {} file(s), {} document(s), {} resource(s), {warnings} warning(s)",
            loaded.files,
            loaded.documents,
            loaded.resources.len()
        );
    }
    Report {
        text,
        ok: errors == 0,
    }
}
