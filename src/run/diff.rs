//! `ccedge diff -c NEW.yaml`: what a reload to NEW.yaml would change in the running process.

use crate::config::summary::{self, Change};
use crate::config::Config;
use std::process::ExitCode;

pub fn run(new: &Config, json: bool) -> ExitCode {
    let running = match crate::observe::admin::running_config(new.server.admin.as_ref()) {
        Ok(running) => running,
        Err(e) => {
            eprintln!(
                "ccedge: cannot read what the running ccedge serves: {e} (ccedge diff asks the \
                 admin listener FILE names, with its token)"
            );
            return ExitCode::from(2);
        }
    };
    let changes: Vec<Change> = summary::diff(&running, &summary::summary(new));
    if json {
        let report = serde_json::json!({"equal": changes.is_empty(), "changes": changes});
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if changes.is_empty() {
        println!(
            "ccedge: {} is what the running ccedge serves",
            new.file.display()
        );
    } else {
        for change in &changes {
            println!("{}", summary::describe(change));
        }
        println!(
            "ccedge: {} change(s) from what runs to {}",
            changes.len(),
            new.file.display()
        );
    }
    if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
