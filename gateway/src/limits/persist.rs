//! The embedded store's state file: hour, day and month counters in `<state-dir>/limits.json`,
//! so a restarted gateway keeps counting a consumer's quota where it stopped.
//!
//! The file is written whole to a temporary file, flushed to disk, then renamed over the old
//! one (and the directory flushed), so a crash leaves either the old or the new file, never
//! a torn one. A file that cannot be read as a state file is set aside as
//! `limits.json.bad` and the gateway starts with empty counters: losing quota counts is
//! better than not serving.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::LimitsError;
use super::key::LimitKey;
use super::window::Window;

/// The state file's name inside `--state-dir`.
pub const STATE_FILE: &str = "limits.json";
/// Where an unreadable state file is moved.
pub const BAD_STATE_FILE: &str = "limits.json.bad";
const TMP_STATE_FILE: &str = "limits.json.tmp";
const VERSION: u32 = 1;
/// A state file past this size is not one this gateway wrote (a full store of the default
/// 100 000 keys with three windows each is about 40 MB).
const MAX_STATE_BYTES: u64 = 256 << 20;

/// One saved counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedCounter {
    pub key: LimitKey,
    pub window: Window,
    /// Start of the counted window, unix seconds.
    pub start: i64,
    pub count: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    counters: Vec<SavedCounter>,
}

/// Reads and writes the state file of one directory.
pub(crate) struct StateDir {
    dir: PathBuf,
    /// Serializes writers (the periodic save and the one at shutdown share the temp file).
    write: Mutex<()>,
}

// === impl StateDir ===

impl StateDir {
    /// Opens (creating it if needed) the state directory.
    pub fn open(dir: &Path) -> Result<Self, LimitsError> {
        fs::create_dir_all(dir).map_err(|source| LimitsError::StateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            write: Mutex::new(()),
        })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The saved counters; none when there is no file. Never fails: an unreadable or
    /// corrupt file is logged as an error and (when corrupt) moved to `limits.json.bad`.
    pub fn load(&self) -> Vec<SavedCounter> {
        let path = self.path();
        let bytes = match read_bounded(&path) {
            Ok(Some(b)) => b,
            Ok(None) => return Vec::new(),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                self.set_aside(&path, &e.to_string());
                return Vec::new();
            }
            Err(e) => {
                tracing::error!(
                    path = %path.display(),
                    error = %e,
                    "cannot read the rate-limit state file; starting with empty counters \
                     (check the permissions of --state-dir)"
                );
                return Vec::new();
            }
        };
        match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(f) if f.version == VERSION => f.counters,
            Ok(f) => {
                self.set_aside(
                    &path,
                    &format!("unknown version {}, expected {VERSION}", f.version),
                );
                Vec::new()
            }
            Err(e) => {
                self.set_aside(&path, &e.to_string());
                Vec::new()
            }
        }
    }

    fn set_aside(&self, path: &Path, why: &str) {
        let bad = self.dir.join(BAD_STATE_FILE);
        let moved = fs::rename(path, &bad);
        tracing::error!(
            path = %path.display(),
            error = why,
            set_aside = %bad.display(),
            moved = moved.is_ok(),
            "the rate-limit state file is corrupt; starting with empty counters, the file \
             is kept aside for inspection"
        );
    }

    /// Writes the counters atomically (temp file, fsync, rename, fsync of the directory).
    pub fn save(&self, counters: Vec<SavedCounter>) -> Result<(), LimitsError> {
        let body = serde_json::to_vec(&StateFile {
            version: VERSION,
            counters,
        })
        .map_err(|source| LimitsError::Encode { source })?;
        let _guard = self.write.lock();
        let tmp = self.dir.join(TMP_STATE_FILE);
        let path = self.path();
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|source| LimitsError::Save { path, source })
    }
}

/// The file's bytes, `None` when it does not exist; `InvalidData` when it is too large.
fn read_bounded(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    f.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_STATE_BYTES} bytes"),
        ));
    }
    Ok(Some(bytes))
}
