//! Temporary directories.
//!
//! Invariant: every [`TempDir`] has a name no other one has, in this process
//! or any other (pid, a per-process counter and the clock's nanoseconds).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

/// A unique directory under `std::env::temp_dir()`, removed on drop unless
/// the test is failing (then it is kept for inspection).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `heartbeatd-test-TAG-PID-N-NANOS`.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("heartbeatd-test-{tag}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `text` to `name` inside the dir (atomically: temp file and
    /// rename, so a daemon reloading at that moment never reads half a file).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", tmp.display(), path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
