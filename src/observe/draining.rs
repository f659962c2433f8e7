//! Processes draining beside the current one after reloads. Each writes what it still holds to
//! `<pid_file>.draining-<pid>.json` every second, which the current process's `/status` lists;
//! and each reads `<pid_file>.revoked`, where the admin listener appends every revocation, so
//! that a user revoked after a reload also loses the WebSockets an older process still carries.
//! Both are small files beside the pid file, which only ccedge's user writes.

use crate::observe::access_log::epoch_ms;
use crate::observe::own_files::{open_own, per_process, read_own, replace};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;

/// Past this size the revocation file is rewritten with only the last day's lines.
const REVOKED_MAX_BYTES: u64 = 64 * 1024;
const REVOKED_KEPT_MS: u128 = 24 * 3600 * 1000;
/// The most read of a report file.
const REPORT_MAX_BYTES: u64 = 4096;

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
    let text = serde_json::to_vec(report).unwrap_or_default();
    if let Err(e) = replace(&path, &text) {
        log::debug!("cannot write {}: {e}", path.display());
    }
}

pub fn remove_report(pid_file: &str, pid: u32) {
    let _ = std::fs::remove_file(report_file(pid_file, pid));
}

/// The reports of the processes draining now. Files of processes gone (killed) are removed.
pub fn reports(pid_file: &str) -> Vec<Report> {
    let mut reports = Vec::new();
    for (pid, path) in per_process(pid_file, ".draining-") {
        let Some(text) = read_own(&path, REPORT_MAX_BYTES) else {
            continue;
        };
        if !alive(pid) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if let Ok(report) = serde_json::from_slice::<Report>(&text) {
            if report.pid == pid {
                reports.push(report);
            }
        }
    }
    reports.sort_by_key(|r| r.pid);
    reports
}

/// Whether process `pid` still runs.
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .is_ok_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

pub fn revoked_file(pid_file: &str) -> PathBuf {
    PathBuf::from(format!("{pid_file}.revoked"))
}

/// Records that `user` was revoked now, for the processes draining beside this one: appended
/// (several admin listeners may write at once during a hand-over); past `REVOKED_MAX_BYTES`,
/// the file is rewritten with its last day, at most half of that size.
pub fn append_revocation(pid_file: &str, user: &str) {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = revoked_file(pid_file);
    let now = epoch_ms();
    let refused = |why: String| {
        log::warn!(
            "cannot record the revocation of {user:?} in {} for processes still draining after \
             a reload: {why}",
            path.display()
        );
    };
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&path);
    let mut file = match file {
        Ok(file) => file,
        Err(e) => return refused(e.to_string()),
    };
    let own = file.metadata().is_ok_and(|m| {
        m.is_file() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o002 == 0
    });
    if !own {
        return refused("it is not a file of ccedge's own; remove it".into());
    }
    if let Err(e) = file.write_all(line(now, user).as_bytes()) {
        return refused(e.to_string());
    }
    if file.metadata().is_ok_and(|m| m.len() > REVOKED_MAX_BYTES) {
        let mut kept = revocations_since(pid_file, now.saturating_sub(REVOKED_KEPT_MS));
        let mut size = 0;
        let newest = kept
            .iter()
            .rev()
            .take_while(|(at, user)| {
                size += line(*at, user).len();
                size as u64 <= REVOKED_MAX_BYTES / 2
            })
            .count();
        let kept: String = kept
            .drain(kept.len() - newest..)
            .map(|(at, user)| line(at, &user))
            .collect();
        if let Err(e) = replace(&path, kept.as_bytes()) {
            log::warn!("cannot shorten {}: {e}", path.display());
        }
    }
}

fn line(at: u128, user: &str) -> String {
    let user = percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC);
    format!("{at}\t{user}\n")
}

fn parse(text: &str, since_ms: u128) -> Vec<(u128, String)> {
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

/// The users revoked after `since_ms` (ms since the epoch), with when.
pub fn revocations_since(pid_file: &str, since_ms: u128) -> Vec<(u128, String)> {
    match read_own(&revoked_file(pid_file), 4 * REVOKED_MAX_BYTES) {
        Some(text) => parse(&String::from_utf8_lossy(&text), since_ms),
        None => Vec::new(),
    }
}

fn drained_file(pid_file: &str) -> PathBuf {
    PathBuf::from(format!("{pid_file}.drained"))
}

/// Records that the instance is drained (`POST /drain`) or not, so that a reload keeps it so.
pub fn set_drained(pid_file: &str, on: bool) {
    let path = drained_file(pid_file);
    let done = if on {
        replace(&path, b"drained by POST /drain; DELETE /drain ends it\n")
    } else {
        std::fs::remove_file(&path).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
    };
    if let Err(e) = done {
        log::warn!(
            "cannot record the drain in {} (a reload will not keep it): {e}",
            path.display()
        );
    }
}

/// Whether the instance was drained when this process took over from the one before.
pub fn drained(pid_file: &str) -> bool {
    open_own(&drained_file(pid_file), REPORT_MAX_BYTES).is_some()
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
    fn the_revocation_file_stays_small_and_keeps_the_latest() {
        let dir = std::env::temp_dir().join(format!("ccedge-revoked-many-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("ccedge.pid").display().to_string();
        for i in 0..7000 {
            append_revocation(&pid_file, &format!("agent{i}@corp.example.com"));
        }
        let size = std::fs::metadata(revoked_file(&pid_file)).unwrap().len();
        assert!(size <= REVOKED_MAX_BYTES + 64, "{size} bytes");
        let users: Vec<String> = revocations_since(&pid_file, 0)
            .into_iter()
            .map(|(_, u)| u)
            .collect();
        assert_eq!(
            users.last().map(String::as_str),
            Some("agent6999@corp.example.com")
        );
        assert!(users.len() > 500, "{} kept", users.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_not_of_ccedges_own_are_not_believed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ccedge-untrusted-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("ccedge.pid").display().to_string();
        // Anyone may write it: someone else could revoke agents in draining processes.
        std::fs::write(revoked_file(&pid_file), "99999999999999\talice\n").unwrap();
        std::fs::set_permissions(
            revoked_file(&pid_file),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        assert!(revocations_since(&pid_file, 0).is_empty());
        std::fs::remove_file(revoked_file(&pid_file)).unwrap();
        // A link elsewhere is not followed.
        let elsewhere = dir.join("elsewhere");
        std::fs::write(&elsewhere, "99999999999999\tbob\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, revoked_file(&pid_file)).unwrap();
        assert!(revocations_since(&pid_file, 0).is_empty());
        append_revocation(&pid_file, "carol");
        assert_eq!(
            std::fs::read_to_string(&elsewhere).unwrap(),
            "99999999999999\tbob\n",
            "written through the link"
        );
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
