//! Reading the files a config names (the config file, its drop-ins, tokens
//! files) so that neither `--check-config` nor a reload can hang or exhaust
//! memory on a file that is not what it should be.
//!
//! Invariants:
//! - the file is opened with `O_NONBLOCK`, so opening a FIFO (or a device
//!   that waits for a peer) returns at once instead of waiting for a writer;
//! - the kind and size are checked on the opened descriptor (`fstat`), not on
//!   the path, so a file swapped between check and read is still checked;
//! - only a regular file is read, and at most `cap + 1` bytes of it, so a
//!   file that grows while being read is refused rather than read forever.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest config file or drop-in read: 1 MiB, far beyond any real
/// config (the shipped one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The largest tokens file read: 1 MiB, some 4,000 tokens of the longest
/// kind (255 bytes).
pub const MAX_TOKENS_FILE_BYTES: u64 = 1 << 20;

/// Reads the regular file at `path`, of at most `cap` bytes. The error is a
/// sentence for the operator, to follow the file's name: "not a regular
/// file (a FIFO)", "larger than 1 MiB", or the OS error.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(format!("not a regular file ({})", kind_name(&kind)));
    }
    if meta.len() > cap {
        return Err(too_large(cap));
    }
    read_at_most(file, cap)
}

/// Reads `file` to its end, or fails once it holds more than `cap` bytes.
fn read_at_most(file: File, cap: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    // The size from fstat may be stale: the file grew after it.
    if bytes.len() as u64 > cap {
        return Err(too_large(cap));
    }
    Ok(bytes)
}

fn too_large(cap: u64) -> String {
    if cap % (1 << 20) == 0 {
        format!("larger than {} MiB", cap >> 20)
    } else {
        format!("larger than {cap} bytes")
    }
}

/// What a file that is not a regular file is, for the error.
fn kind_name(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("heartbeatd-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_a_regular_file_up_to_the_cap() {
        let dir = temp_dir("regular");
        let path = dir.join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_capped(&path, 10).unwrap(), b"0123456789");
        assert_eq!(read_capped(&path, 9).unwrap_err(), "larger than 9 bytes");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let dir = temp_dir("kinds");
        assert_eq!(read_capped(&dir, 1 << 20).unwrap_err(), "not a regular file (a directory)");
        assert_eq!(
            read_capped(Path::new("/dev/zero"), MAX_CONFIG_BYTES).unwrap_err(),
            "not a regular file (a character device)"
        );
        let fifo = dir.join("fifo");
        assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Without O_NONBLOCK this open would wait for a writer forever.
        assert_eq!(read_capped(&fifo, 1 << 20).unwrap_err(), "not a regular file (a FIFO)");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn names_the_cap_in_mib() {
        assert_eq!(too_large(MAX_CONFIG_BYTES), "larger than 1 MiB");
        assert!(read_capped(Path::new("/nonexistent/x"), 1).unwrap_err().contains("No such file"));
    }
}
