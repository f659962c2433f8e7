//! The command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// ccedge: a reverse proxy for contact-center edges (Cloud Connect digital channels and VPN-less
/// Finesse Desktop), built on Pingora.
#[derive(Debug, Parser)]
#[command(name = "ccedge", version, about, long_about = None)]
pub struct Cli {
    /// The YAML configuration file (docs/configuration.md describes every key).
    #[arg(short = 'c', long = "conf", value_name = "FILE", global = true)]
    pub conf: Option<PathBuf>,

    /// Validate the configuration (YAML, keys, addresses, certificate files) and exit: 0 when it
    /// is valid, 1 with every problem (file:line: key.path: message) when not. Binds nothing.
    #[arg(short = 't', long = "test")]
    pub test: bool,

    /// Run in the background; the process id goes to server.pid_file.
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,

    /// Take over the listening sockets of a running ccedge through server.upgrade_sock (graceful
    /// upgrade: start the new process with -u, then send SIGQUIT to the old one).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the proxy map of every Finesse site in FILE (the lines its proxy_map listener
    /// serves: upstreamhost:port=publichost:port) and exit.
    Proxymap,
    /// Run the server under a supervisor (PID 1 in a container, the main process under
    /// systemd): SIGHUP reloads FILE without dropping requests, SIGTERM stops gracefully.
    Supervise,
    /// Validate FILE as -t does; if valid, have the running supervisor reload it (a new server
    /// takes over the listening sockets, the old one finishes its requests). Exit 0 when the
    /// new configuration serves, 1 when nothing changed.
    Reload,
    /// Have the running ccedge of FILE (its supervisor, which tells every server process, or a
    /// daemon) reopen the access log, as after a log rotation; exit 0 once the file is there.
    Reopen,
    /// Compare FILE with what the running ccedge serves (asked through the admin listener FILE
    /// names): listeners, routes, upstreams, limits, auth, certificates with their expiry. Exit 0
    /// when equal, 1 when different, 2 when the comparison could not be made.
    Diff {
        /// Print the changes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the admin listener of FILE answers /healthz, 1 otherwise (for container
    /// health checks); with --ready, /readyz (not starting, draining or stopping).
    Health {
        /// Ask /readyz instead: whether this instance should get new connections.
        #[arg(long)]
        ready: bool,
    },
    /// Take the running ccedge of FILE out of its balancer's rotation (through the admin
    /// listener): /readyz answers 503, kept-alive connections close after their next answer,
    /// HTTP/2 connections get GOAWAY, WebSockets go on. --off ends the drain.
    Drain {
        /// End the drain: /readyz answers 200 again.
        #[arg(long)]
        off: bool,
    },
    /// Empty the caches of the running ccedge (through the admin listener of FILE); with
    /// --prefix, only the entries whose request path starts with it.
    Purge {
        /// Only entries whose path starts with this (for example /desktop/).
        #[arg(long, value_name = "PATH")]
        prefix: Option<String>,
    },
    /// Revoke USER on the running ccedge (through the admin listener of FILE): the verdicts
    /// kept on the user's credentials stop counting, so the next request is checked again, and
    /// the user's open WebSockets are closed.
    Revoke {
        /// The user name, as the agent signs in with it (any case).
        user: String,
    },
    /// Check FILE against the live systems: listener certificates (key, names, chain, expiry),
    /// every internal server (DNS, TCP, TLS and mTLS, its certificate, an HTTP probe sent as
    /// ccedge sends requests), the credential check and signing keys, the proxy map. One line
    /// per check (OK, WARN, FAIL) with what to do; exit 0 when nothing failed.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The longest wait, in seconds, for each stage of a check (resolve, connect, TLS, HTTP).
        #[arg(long, value_name = "SECONDS", default_value_t = 5)]
        timeout: u64,
    },
    /// Print the JSON Schema of the configuration file (for editors: completion, hover help
    /// and errors while typing) and exit. Needs no -c.
    Schema,
}
