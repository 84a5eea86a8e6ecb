//! The configuration model: Kubernetes-shaped documents (`apiVersion`, `kind`, `metadata`,
//! `spec`) parsed into typed structs, validated, and compiled into the resources the
//! discovery server distributes.
//!
//! The pipeline is split so that a second transport can feed it: a source yields
//! [`ParsedDocument`]s (today from a directory of YAML files, see [`source`]; later from
//! Kubernetes watches), and [`compile`] turns one complete set of documents into a
//! [`ResourceSet`] or a list of [`Diagnostic`]s. Nothing is half-applied: either every
//! document is valid and the whole set is returned, or nothing is.

mod compile;
pub mod document;
mod edge;
mod endpoints;
mod gateway;
pub mod kubernetes;
mod mesh;
mod parse;
mod policy;
mod resources;
mod route;
pub mod source;
mod validate;

use std::{fmt, path::PathBuf};

pub use compile::compile;
pub use document::ParsedDocument;
pub use parse::{parse_file, parse_str};
pub use resources::{ALL_TYPES, Delta, ResourceSet, resource_type};
pub use source::{Loaded, Source, load_paths};

/// Where a document came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// A YAML file; `doc` is the document's 0-based index within the file (counting the
    /// `---`-separated documents), absent for problems with the file as a whole.
    File { path: PathBuf, doc: Option<usize> },
    /// An object read from a Kubernetes API server.
    Kubernetes {
        /// The object's `kind`, e.g. `Pod`.
        kind: String,
        namespace: String,
        name: String,
    },
}

impl Origin {
    pub fn file_doc(path: impl Into<PathBuf>, doc: usize) -> Self {
        Origin::File {
            path: path.into(),
            doc: Some(doc),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                doc: Some(doc),
            } => {
                write!(f, "{}: document {doc} (0-based)", path.display())
            }
            Origin::File { path, doc: None } => write!(f, "{}", path.display()),
            Origin::Kubernetes {
                kind,
                namespace,
                name,
            } => write!(f, "{kind} {namespace}/{name}"),
        }
    }
}

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The configuration is rejected.
    Error,
    /// Reported, but the configuration is accepted (e.g. an unknown kind that is skipped).
    Warning,
}

/// One problem with one document, located by origin and field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub origin: Origin,
    /// The document's kind, when known, e.g. `Service`.
    pub kind: Option<String>,
    /// The field path inside the document, e.g. `spec.ports[1].port`; empty when the
    /// problem concerns the whole document.
    pub path: String,
    /// 1-based line in the file, when the YAML parser reported one.
    pub line: Option<u64>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(origin: Origin, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            origin,
            kind: None,
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }

    pub fn warning(origin: Origin, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(origin, path, message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(kind) = &self.kind {
            write!(f, " ({kind})")?;
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}
