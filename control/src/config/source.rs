//! Where configuration comes from: files and directories of YAML documents, watched for
//! changes, or a Kubernetes cluster ([`super::kubernetes`]), whose objects become the same
//! [`ParsedDocument`]s and go through the same [`compile`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
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

/// The longest a change waits for its source to go quiet. A source that never does (a
/// busy cluster, where some pod changes status every few milliseconds; a script rewriting
/// a file in a loop) would otherwise hold back every change, a workload's readiness
/// included, which must reach agents well within a second. Each re-read compiles the whole
/// configuration, so this also bounds re-reads to a few per second.
pub const MAX_COALESCE: Duration = Duration::from_millis(500);

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
    load_paths_cached(paths, &mut ParseCache::default())
}

/// Files parsed by an earlier read, reused while they are unchanged. Parsing is most of a
/// reload's cost (about 70 % for a 12,000-document mesh), and a change usually touches one
/// file, so a watcher re-parses only what changed; validation and compilation still see the
/// whole configuration, as they must.
#[derive(Debug, Default)]
pub struct ParseCache {
    files: HashMap<PathBuf, CachedFile>,
}

#[derive(Debug)]
struct CachedFile {
    stamp: FileStamp,
    documents: Vec<Arc<ParsedDocument>>,
    /// The file's own parse problems, replayed on every read so reports stay complete.
    diagnostics: Vec<Diagnostic>,
}

/// What identifies one version of a file without reading it. A rename onto the path (the
/// atomic way to replace a file) changes the inode; an edit in place changes the size or the
/// modification and change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// [`load_paths`], re-parsing only the files whose stamp changed since `cache` saw them.
/// The stamp is taken before the file is read, so a write racing the read is seen as a change
/// on the next reload rather than missed.
pub fn load_paths_cached(paths: &[PathBuf], cache: &mut ParseCache) -> Loaded {
    let mut diagnostics = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, true, &mut files, &mut diagnostics);
    }
    let mut documents: Vec<Arc<ParsedDocument>> = Vec::new();
    let mut next = HashMap::with_capacity(files.len());
    for file in &files {
        let stamp = FileStamp::of(file);
        let cached = cache
            .files
            .remove(file)
            .filter(|cached| Some(cached.stamp) == stamp);
        let (file_documents, file_diagnostics) = match cached {
            Some(cached) => (cached.documents, cached.diagnostics),
            None => {
                let mut file_diagnostics = Vec::new();
                let parsed = parse_file(file, &mut file_diagnostics);
                (parsed.into_iter().map(Arc::new).collect(), file_diagnostics)
            }
        };
        diagnostics.extend(file_diagnostics.iter().cloned());
        documents.extend(file_documents.iter().cloned());
        // An unreadable file has no stamp and is read again next time.
        if let Some(stamp) = stamp {
            next.insert(
                file.clone(),
                CachedFile {
                    stamp,
                    documents: file_documents,
                    diagnostics: file_diagnostics,
                },
            );
        }
    }
    cache.files = next;
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
        // Parse once now, off the serving path, so the first change re-parses one file.
        let cache = Arc::new(parking_lot::Mutex::new(ParseCache::default()));
        {
            let (dir, cache) = (dir.clone(), cache.clone());
            tokio::task::spawn_blocking(move || {
                load_paths_cached(std::slice::from_ref(&dir), &mut cache.lock());
            });
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                event = rx.recv() => if event.is_none() { return Ok(()) },
            }
            // Wait until the directory has been quiet for `debounce`, or `MAX_COALESCE`.
            let cap = tokio::time::Instant::now() + MAX_COALESCE;
            loop {
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(debounce) => break,
                    _ = tokio::time::sleep_until(cap) => break,
                    _ = rx.recv() => {}
                }
            }
            debug!(source = %self, "configuration changed, re-reading");
            let (dir, cache) = (dir.clone(), cache.clone());
            let reload = move || load_paths_cached(std::slice::from_ref(&dir), &mut cache.lock());
            match tokio::task::spawn_blocking(reload).await {
                Ok(loaded) => on_change(loaded),
                Err(e) => warn!(error = %e, "configuration reload task failed"),
            }
        }
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    const WORKLOAD: &str = "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: NAME, namespace: default}\nspec: {serviceAccount: default, node: n1, ips: [\"IP\"]}\n";

    fn workload(name: &str, ip: &str) -> String {
        WORKLOAD.replace("NAME", name).replace("IP", ip)
    }

    /// Replaces a file the way operators and the testbed do: write aside, rename over.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn unchanged_files_are_reused_and_changes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, workload("a", "10.0.0.1")).unwrap();
        std::fs::write(&b, workload("b", "10.0.0.2")).unwrap();
        let paths = [dir.path().to_path_buf()];
        let mut cache = ParseCache::default();
        let first = load_paths_cached(&paths, &mut cache);
        assert!(!first.has_errors(), "{:?}", first.diagnostics);
        let a_doc = cache.files[&a].documents[0].clone();

        replace(&b, &workload("b", "10.0.0.3"));
        let second = load_paths_cached(&paths, &mut cache);
        assert!(!second.has_errors());
        assert!(
            Arc::ptr_eq(&a_doc, &cache.files[&a].documents[0]),
            "a.yaml was re-parsed"
        );
        let text = format!("{:?}", second.resources);
        assert!(
            text.contains("10.0.0.3") && !text.contains("10.0.0.2"),
            "b.yaml's change lost"
        );

        // A file that fails to parse keeps failing from the cache, with its diagnostic.
        replace(&b, "kind: [unclosed");
        for _ in 0..2 {
            let loaded = load_paths_cached(&paths, &mut cache);
            assert!(loaded.errors().any(|d| format!("{d}").contains("b.yaml")));
        }
        // A removed file leaves the cache and the configuration.
        std::fs::remove_file(&b).unwrap();
        let fourth = load_paths_cached(&paths, &mut cache);
        assert!(!fourth.has_errors());
        assert!(!cache.files.contains_key(&b));
        assert_eq!(fourth.documents, 1);
    }
}
