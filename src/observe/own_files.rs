//! Files ccedge keeps beside its pid file (node health, reports of draining processes,
//! revocations, the drain flag), whose folder may be shared with other users (/tmp): read only
//! when they are regular files of ccedge's own user that nobody else may write, never through a
//! link, a FIFO or a device; written whole, into a new file, then renamed into place.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Opens `path` for reading only if it is a regular file of this user that other users may not
/// write (no symbolic link, no FIFO or device: the files are beside the pid file, which may be
/// in a shared folder such as /tmp), and no larger than `max` bytes.
pub fn open_own(path: &Path, max: u64) -> Option<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    // Group-writable is accepted: under a umask of 002 (Debian's and Ubuntu's default for
    // users) ccedge's own files are.
    let own = meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o002 == 0;
    (meta.is_file() && own && meta.len() <= max).then_some(file)
}

/// `path` whole, when `open_own` accepts it.
pub fn read_own(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut text = Vec::new();
    open_own(path, max)?.take(max).read_to_end(&mut text).ok()?;
    Some(text)
}

/// Writes `text` as `path` whole: into a new file of this user's, then renamed over `path`.
pub fn replace(path: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let partial = PathBuf::from(format!(
        "{}.partial-{}-{:08x}",
        path.display(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&partial)?;
    let written = file
        .write_all(text)
        .and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// The files beside `pid_file` named `<pid_file><infix><pid>.json`, one per process, with their
/// process ids.
pub fn per_process(pid_file: &str, infix: &str) -> Vec<(u32, PathBuf)> {
    let path = Path::new(pid_file);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}{infix}", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry
                .file_name()
                .to_string_lossy()
                .strip_prefix(&prefix)?
                .strip_suffix(".json")?
                .parse::<u32>()
                .ok()?;
            Some((pid, entry.path()))
        })
        .collect()
}
