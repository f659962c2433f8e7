//! Processes draining beside the current one after reloads. Each writes what it still holds to
//! `<pid_file>.draining-<pid>.json` every second, which the current process's `/status` lists;
//! and each reads `<pid_file>.revoked`, where the admin listener appends every revocation, so
//! that a user revoked after a reload also loses the WebSockets an older process still carries.
//! Both are small files beside the pid file, which only ccedge's user writes.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Past this size the revocation file is rewritten with only the last day's lines.
const REVOKED_MAX_BYTES: u64 = 64 * 1024;
const REVOKED_KEPT_MS: u128 = 24 * 3600 * 1000;

/// What a draining process still holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub pid: u32,
    /// When it handed over (RFC 3339).
    pub since: String,
    pub open_connections: usize,
    pub websockets: usize,
    /// When it closes the WebSockets it still has (RFC 3339).
    pub websockets_close_at: String,
}

pub fn report_file(pid_file: &str, pid: u32) -> PathBuf {
    PathBuf::from(format!("{pid_file}.draining-{pid}.json"))
}

/// Writes `report` whole (by rename).
pub fn write_report(pid_file: &str, report: &Report) {
    let path = report_file(pid_file, report.pid);
    let partial = path.with_extension("partial");
    let text = serde_json::to_vec(report).unwrap_or_default();
    if let Err(e) = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, &path)) {
        log::debug!("cannot write {}: {e}", path.display());
    }
}

/// The reports of the processes draining now (files of processes gone are left out).
pub fn reports(pid_file: &str) -> Vec<Report> {
    let path = Path::new(pid_file);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.draining-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return Vec::new();
    };
    let mut reports: Vec<Report> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".json")
        })
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .filter(|r: &Report| alive(r.pid))
        .collect();
    reports.sort_by_key(|r| r.pid);
    reports
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .is_ok_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

pub fn revoked_file(pid_file: &str) -> PathBuf {
    PathBuf::from(format!("{pid_file}.revoked"))
}

fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Records that `user` was revoked now, for the processes draining beside this one.
pub fn append_revocation(pid_file: &str, user: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let path = revoked_file(pid_file);
    let now = epoch_ms();
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > REVOKED_MAX_BYTES) {
        let kept: String = revocations_since(pid_file, now.saturating_sub(REVOKED_KEPT_MS))
            .into_iter()
            .map(|(at, user)| line(at, &user))
            .collect();
        let _ = std::fs::write(&path, kept);
    }
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(line(now, user).as_bytes()));
    if let Err(e) = appended {
        log::warn!(
            "cannot record the revocation of {user:?} in {} for processes still draining \
             after a reload: {e}",
            path.display()
        );
    }
}

fn line(at: u128, user: &str) -> String {
    let user = percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC);
    format!("{at}\t{user}\n")
}

/// The users revoked after `since_ms` (ms since the epoch), with when.
pub fn revocations_since(pid_file: &str, since_ms: u128) -> Vec<(u128, String)> {
    let Ok(text) = std::fs::read_to_string(revoked_file(pid_file)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (at, user) = line.split_once('\t')?;
            let at: u128 = at.parse().ok()?;
            let user = percent_encoding::percent_decode_str(user)
                .decode_utf8()
                .ok()?
                .into_owned();
            (at > since_ms).then_some((at, user))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_are_read_back_after_a_moment_and_odd_names_survive() {
        let dir = std::env::temp_dir().join(format!("ccedge-revoked-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("ccedge.pid").display().to_string();
        let before = epoch_ms();
        append_revocation(&pid_file, "CORP\\j.doe\tx");
        append_revocation(&pid_file, "alice");
        let seen = revocations_since(&pid_file, before.saturating_sub(1));
        let users: Vec<&str> = seen.iter().map(|(_, u)| u.as_str()).collect();
        assert_eq!(users, ["CORP\\j.doe\tx", "alice"]);
        assert!(revocations_since(&pid_file, seen[1].0).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reports_of_live_processes_are_listed() {
        let dir = std::env::temp_dir().join(format!("ccedge-draining-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("ccedge.pid").display().to_string();
        let report = |pid| Report {
            pid,
            since: "2026-11-26T00:00:00Z".into(),
            open_connections: 3,
            websockets: 2,
            websockets_close_at: "2026-11-26T08:00:00Z".into(),
        };
        write_report(&pid_file, &report(std::process::id()));
        // No such process: left out.
        write_report(&pid_file, &report(i32::MAX as u32));
        let listed = reports(&pid_file);
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].pid, listed[0].websockets),
            (std::process::id(), 2)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
