//! ccedge: the reverse proxy for contact-center edges.

mod cli;

use ccedge::{config, doctor, finesse, observe, run};
use clap::Parser;

/// mimalloc: ccedge allocates and frees many small objects per request (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

fn main() -> ExitCode {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    // Pingora's routine events are counted whatever the level shown (observe::log_levels).
    log::set_max_level(logger.filter().max(log::LevelFilter::Warn));
    let _ = log::set_boxed_logger(Box::new(observe::log_levels::Levels::new(logger)));
    let cli = cli::Cli::parse();
    if let Some(cli::Command::Schema) = cli.command {
        return match serde_json::to_string_pretty(&config::schema()) {
            Ok(schema) => {
                println!("{schema}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ccedge: cannot write the schema: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(file) = cli.conf.clone() else {
        eprintln!("ccedge: -c FILE is required (ccedge --help explains the options)");
        return ExitCode::FAILURE;
    };
    if let Some(cli::Command::Reopen) = cli.command {
        return run::supervise::reopen(&file);
    }
    if let Some(
        cli::Command::Health { .. }
        | cli::Command::Purge { .. }
        | cli::Command::Revoke { .. }
        | cli::Command::Drain { .. },
    ) = &cli.command
    {
        // Only the admin address: these must not depend on DNS or certificate files.
        let admin = match config::admin_access(&file) {
            Ok(admin) => admin,
            Err(e) => {
                eprintln!("ccedge: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match &cli.command {
            Some(cli::Command::Purge { prefix }) => {
                observe::admin::purge(admin.as_ref(), prefix.as_deref())
            }
            Some(cli::Command::Revoke { user }) => observe::admin::revoke(admin.as_ref(), user),
            Some(cli::Command::Drain { off }) => observe::admin::drain(admin.as_ref(), *off),
            Some(cli::Command::Health { ready }) => observe::admin::probe(admin.as_ref(), *ready),
            _ => ExitCode::FAILURE,
        };
    }
    let config = match config::load(&file) {
        Ok(config) => config,
        Err(e) if matches!(cli.command, Some(cli::Command::Diff { .. })) => {
            let json = matches!(cli.command, Some(cli::Command::Diff { json: true }));
            return run::diff::failed(&format!("configuration rejected:\n{e}"), json);
        }
        Err(e) => {
            if let Some(cli::Command::Doctor { json, .. }) = cli.command {
                return doctor::unloadable(&file, &e.to_string(), json);
            }
            eprintln!("ccedge: configuration rejected:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(cli::Command::Diff { json }) = cli.command {
        return run::diff::run(&config, json);
    }
    if let Some(cli::Command::Doctor { json, timeout }) = cli.command {
        return doctor::run(
            &config,
            json,
            std::time::Duration::from_secs(timeout.max(1)),
        );
    }
    if let Err(e) = run::process::check(&config) {
        eprintln!("ccedge: configuration rejected:\n{}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    match cli.command {
        Some(cli::Command::Proxymap) => {
            for site in &config.finesse {
                if config.finesse.len() > 1 {
                    println!("# {}", site.name);
                }
                print!("{}", finesse::proxymap::text(&site.servers));
            }
            return ExitCode::SUCCESS;
        }
        Some(cli::Command::Supervise) => return run::supervise::supervise(&file, config),
        Some(cli::Command::Reload) => return run::supervise::reload(&file, &config),
        Some(cli::Command::Doctor { json, timeout }) => {
            return doctor::run(
                &config,
                json,
                std::time::Duration::from_secs(timeout.max(1)),
            )
        }
        Some(
            cli::Command::Health { .. }
            | cli::Command::Drain { .. }
            | cli::Command::Purge { .. }
            | cli::Command::Revoke { .. }
            | cli::Command::Reopen
            | cli::Command::Diff { .. }
            | cli::Command::Schema,
        )
        | None => {}
    }
    for warning in run::process::warnings(&config) {
        log::warn!("{warning}");
    }
    if cli.test {
        println!(
            "ccedge: configuration {} is valid: {} digital channel(s), {} finesse site(s)",
            file.display(),
            config.digital.len(),
            config.finesse.len()
        );
        for line in run::process::certificates(&config) {
            println!("ccedge: {line}");
        }
        return ExitCode::SUCCESS;
    }
    // An upgrade (`-u`) takes over from the process that holds the file.
    if cli.daemon && !cli.upgrade {
        if let Err(e) = run::supervise::pid_file_free(&config) {
            eprintln!("ccedge: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run::process::run(config, cli.daemon, cli.upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccedge: {e}");
            ExitCode::FAILURE
        }
    }
}
