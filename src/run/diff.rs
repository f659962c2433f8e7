//! `ccedge diff -c NEW.yaml`: what a reload to NEW.yaml would change in the running process.
//! The running process is asked through the admin listener it runs with (its supervisor records
//! it), so that a new admin address or token in NEW.yaml, or in the running file edited in
//! place, shows as a change rather than making the comparison impossible.

use crate::config::summary::{self, Change};
use crate::config::Config;
use std::io::Write;
use std::process::ExitCode;

/// Reports why no comparison could be made (as JSON with `--json`), exit status 2.
pub fn failed(message: &str, json: bool) -> ExitCode {
    if json {
        let report = serde_json::json!({"error": message});
        let _ = writeln!(std::io::stdout(), "{report}");
    } else {
        eprintln!("ccedge: {message}");
    }
    ExitCode::from(2)
}

pub fn run(new: &Config, json: bool) -> ExitCode {
    if let Err(e) = crate::run::process::check(new) {
        let message = format!("{}: a reload would refuse it: {e}", new.file.display());
        return failed(&message, json);
    }
    let admin =
        crate::run::supervise::running_admin(new).unwrap_or_else(|| new.server.admin.clone());
    let running = match crate::observe::admin::running_config(admin.as_ref()) {
        Ok(running) => running,
        Err(e) => {
            let message = format!(
                "cannot read what the running ccedge serves: {e} (asked at the admin listener \
                 it runs with, or at FILE's without a supervisor, with its token)"
            );
            return failed(&message, json);
        }
    };
    let changes: Vec<Change> = summary::diff(&running, &summary::summary(new));
    let refused = changes
        .iter()
        .any(|c| matches!(c.path.as_str(), "server.pid_file" | "server.upgrade_sock"));
    let mut out = std::io::stdout().lock();
    if json {
        let report = serde_json::json!({
            "equal": changes.is_empty(),
            "reload_refused": refused,
            "changes": changes,
        });
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if changes.is_empty() {
        let _ = writeln!(
            out,
            "ccedge: {} is what the running ccedge serves",
            new.file.display()
        );
    } else {
        for change in &changes {
            let _ = writeln!(out, "{}", summary::describe(change));
        }
        let _ = writeln!(
            out,
            "ccedge: {} change(s) from what runs to {}",
            changes.len(),
            new.file.display()
        );
        if refused {
            let _ = writeln!(
                out,
                "ccedge: a reload refuses a new server.pid_file or server.upgrade_sock: restart instead"
            );
        }
    }
    if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
