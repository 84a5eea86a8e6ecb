//! Where configuration comes from: files and directories of YAML documents, watched for
//! changes, or a Kubernetes cluster ([`super::kubernetes`]), whose objects become the same
//! [`ParsedDocument`]s and go through the same [`compile`].

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    Diagnostic, Origin, ParsedDocument, ResourceSet, compile, kubernetes::KubernetesSource,
    parse_file,
};

/// How long the directory must stay quiet before it is re-read: editors and `kubectl cp`
/// write a file in several steps, and a ConfigMap update swaps a symlink after writing a
/// whole new directory. Long enough to coalesce those, short enough to feel immediate.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(150);

/// A configuration source.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory of `*.yaml` / `*.yml` files, read recursively and watched.
    Directory(PathBuf),
    /// A Kubernetes API server, already connected and listed (see
    /// [`KubernetesSource::connect`]).
    Kubernetes(KubernetesSource),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Directory(dir) => write!(f, "directory {}", dir.display()),
            Source::Kubernetes(k) => write!(f, "{k}"),
        }
    }
}

/// The outcome of reading a source once.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The compiled resources; only to be used when [`Loaded::has_errors`] is false.
    pub resources: ResourceSet,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// How many files were read.
    pub files: usize,
    /// How many documents of known kinds parsed.
    pub documents: usize,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

/// Reads, validates and compiles files and directories (recursively), as one configuration.
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    let mut diagnostics = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, true, &mut files, &mut diagnostics);
    }
    let mut documents: Vec<ParsedDocument> = Vec::new();
    for file in &files {
        documents.extend(parse_file(file, &mut diagnostics));
    }
    let resources = compile(&documents, &mut diagnostics);
    Loaded {
        resources,
        diagnostics,
        files: files.len(),
        documents: documents.len(),
    }
}

/// Adds the YAML files under `path` in name order. A path named explicitly is read whatever
/// its extension; inside directories only `*.yaml` and `*.yml` count, and hidden entries are
/// skipped (editor swap files, and the `..data` links of a mounted ConfigMap, whose files
/// are also visible under their plain names).
fn collect_files(
    path: &Path,
    explicit: bool,
    files: &mut Vec<PathBuf>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let whole = |message: String| {
        Diagnostic::error(
            Origin::File {
                path: path.to_path_buf(),
                doc: None,
            },
            "",
            message,
        )
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            diagnostics.push(whole(format!("cannot read: {e}")));
            return;
        }
    };
    if meta.is_file() {
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if explicit || yaml {
            files.push(path.to_path_buf());
        }
        return;
    }
    if !meta.is_dir() {
        return;
    }
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            diagnostics.push(whole(format!("cannot list the directory: {e}")));
            return;
        }
    };
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if !hidden {
            collect_files(&entry, false, files, diagnostics);
        }
    }
}

impl Source {
    /// Reads the source once.
    pub fn load(&self) -> Loaded {
        match self {
            Source::Directory(dir) => load_paths(std::slice::from_ref(dir)),
            Source::Kubernetes(k) => k.load(),
        }
    }

    /// Watches the source and calls `on_change` with a fresh [`Loaded`] after each burst of
    /// changes, until `shutdown` completes. The first load is the caller's (see
    /// [`Source::load`]), so that startup can fail fast on a bad configuration.
    pub async fn watch<F>(
        self,
        debounce: Duration,
        mut on_change: F,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), notify::Error>
    where
        F: FnMut(Loaded),
    {
        let dir = match &self {
            Source::Directory(dir) => dir,
            Source::Kubernetes(k) => {
                k.clone().watch(debounce, on_change, shutdown).await;
                return Ok(());
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                match event {
                    Ok(event) if event.kind.is_access() => {}
                    Ok(_) => {
                        // The receiver is gone only during shutdown.
                        let _ = tx.send(());
                    }
                    Err(e) => warn!(error = %e, "configuration watch error"),
                }
            })?;
        notify::Watcher::watch(&mut watcher, dir, notify::RecursiveMode::Recursive)?;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                event = rx.recv() => if event.is_none() { return Ok(()) },
            }
            // Wait until the directory has been quiet for `debounce`.
            loop {
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(debounce) => break,
                    _ = rx.recv() => {}
                }
            }
            debug!(source = %self, "configuration changed, re-reading");
            let source = self.clone();
            match tokio::task::spawn_blocking(move || source.load()).await {
                Ok(loaded) => on_change(loaded),
                Err(e) => warn!(error = %e, "configuration reload task failed"),
            }
        }
    }
}
