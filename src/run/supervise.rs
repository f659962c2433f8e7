//! `ccedge supervise`: a small parent (PID 1 in a container, the main process under systemd)
//! that runs the server as its child and turns SIGHUP into a graceful reload — a new server
//! started in Pingora upgrade mode takes over the listening sockets, then the old one drains —
//! and SIGTERM into a graceful stop. `ccedge reload` validates a file and asks the supervisor.
//!
//! The supervisor keeps a small JSON state file next to `server.pid_file` (`<pid_file>.json`)
//! saying which server process is current and how the last reload went.

use crate::config::{self, Config};
use crate::observe::access_log::epoch_ms;
use crate::run::process;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

/// Environment variable naming the file a supervised server writes its pid to once it runs.
pub const READY_FILE_ENV: &str = "CCEDGE_READY_FILE";

const POLL: Duration = Duration::from_millis(20);
/// How long a new server may take to bind the upgrade socket, and then to start serving.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
const READY_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    supervisor_pid: u32,
    config: PathBuf,
    /// The admin listener of the configuration that runs (and its token: the file is this
    /// user's only), for `ccedge diff` after the file was edited in place.
    #[serde(default)]
    admin: Option<RunningAdmin>,
    server_pid: u32,
    /// Reload attempts so far (successful or not).
    reloads: u64,
    last_reload: Option<Outcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunningAdmin {
    listen: std::net::SocketAddr,
    token: Option<String>,
}

impl RunningAdmin {
    fn of(config: &Config) -> Option<RunningAdmin> {
        config.server.admin.as_ref().map(|a| RunningAdmin {
            listen: a.listen,
            token: a.token.as_ref().map(|t| t.0.clone()),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    ok: bool,
    message: String,
    /// When the attempt began (ms since the epoch): it read the file after that moment.
    started_ms: u128,
    at: String,
}

/// A reload's message as the state file keeps it: a few KiB at most (the file is read with a cap).
fn clipped(mut message: String) -> String {
    const MAX: usize = 16 * 1024;
    if message.len() > MAX {
        let mut end = MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("\n... (cut; the supervisor's log has it whole)");
    }
    message
}

fn state_file(config: &Config) -> PathBuf {
    PathBuf::from(format!("{}.json", config.server.pid_file))
}

fn read_state(path: &Path) -> Option<State> {
    serde_json::from_slice(&crate::observe::own_files::read_own(path, 64 * 1024)?).ok()
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| kill(Pid::from_raw(pid), None).is_ok())
}

fn send(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        if let Err(e) = kill(Pid::from_raw(raw), signal) {
            log::warn!("supervisor: could not send {signal} to {pid}: {e}");
        }
    }
}

/// Runs the supervisor until a stop signal or until the serving process dies.
pub fn supervise(file: &Path, config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ccedge: cannot start the supervisor: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Before anything else: a reload asked during the start must not kill the supervisor.
        let signals = match Signals::new() {
            Ok(signals) => signals,
            Err(e) => {
                log::error!("supervisor: cannot handle signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        match Supervisor::start(file, config).await {
            Ok(mut s) => s.run(signals).await,
            Err(e) => {
                log::error!("supervisor: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The signals the supervisor answers.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    child: tokio::signal::unix::Signal,
    reopen: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            child: signal(SignalKind::child())?,
            reopen: signal(SignalKind::user_defined1())?,
        })
    }
}

struct Supervisor {
    file: PathBuf,
    config: Config,
    /// `server.pid_file`, locked for as long as this supervisor lives.
    _pid_lock: std::fs::File,
    current: Child,
    /// Servers that handed over their sockets and are finishing their requests, with their pids.
    draining: Vec<(u32, Child)>,
    /// Draining servers told to close their WebSockets (past `max_draining_processes`).
    closing: Vec<u32>,
    state: State,
}

impl Supervisor {
    async fn start(file: &Path, config: Config) -> Result<Supervisor, String> {
        let file = std::fs::canonicalize(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let pid_lock = claim_pid_file(&config)?;
        let mut current = spawn(&file, &config, false)?;
        wait_ready(&mut current, &config).await?;
        let state = State {
            supervisor_pid: std::process::id(),
            config: file.clone(),
            admin: RunningAdmin::of(&config),
            server_pid: current.id().unwrap_or_default(),
            reloads: 0,
            last_reload: None,
        };
        log::info!(
            "supervisor: server {} is serving {}",
            state.server_pid,
            file.display()
        );
        let supervisor = Supervisor {
            file,
            config,
            _pid_lock: pid_lock,
            current,
            draining: Vec::new(),
            closing: Vec::new(),
            state,
        };
        supervisor.save();
        Ok(supervisor)
    }

    /// Writes the state file (whole, by rename, so a reader never sees half of it).
    fn save(&self) {
        let path = state_file(&self.config);
        let text = serde_json::to_vec_pretty(&self.state).unwrap_or_default();
        if let Err(e) = crate::observe::own_files::replace(&path, &text) {
            log::warn!("supervisor: cannot write {}: {e}", path.display());
        }
    }

    async fn run(&mut self, mut signals: Signals) -> ExitCode {
        loop {
            tokio::select! {
                _ = signals.hangup.recv() => {
                    if let Err(code) = self.reload().await {
                        return code;
                    }
                }
                _ = signals.terminate.recv() => return self.stop(Signal::SIGTERM).await,
                _ = signals.quit.recv() => return self.stop(Signal::SIGTERM).await,
                _ = signals.interrupt.recv() => return self.stop(Signal::SIGINT).await,
                _ = signals.child.recv() => {
                    if let Some(code) = self.reap() {
                        return code;
                    }
                }
                _ = signals.reopen.recv() => self.reopen(),
            }
        }
    }

    /// Passes SIGUSR1 on to every server: the draining ones write their last lines too.
    fn reopen(&mut self) {
        let servers: Vec<u32> = std::iter::once(self.state.server_pid)
            .chain(self.draining.iter().map(|(pid, _)| *pid))
            .collect();
        log::info!("supervisor: SIGUSR1: servers {servers:?} reopen the access log");
        for pid in servers {
            send(pid, Signal::SIGUSR1);
        }
    }

    /// Collects finished children. `Some` when the serving process itself has died.
    fn reap(&mut self) -> Option<ExitCode> {
        self.draining.retain_mut(|(pid, old)| match old.try_wait() {
            Ok(Some(status)) => {
                log::info!("supervisor: previous server {pid} finished ({status})");
                false
            }
            _ => true,
        });
        let draining = &self.draining;
        self.closing
            .retain(|pid| draining.iter().any(|(other, _)| other == pid));
        match self.current.try_wait() {
            Ok(Some(status)) => {
                log::error!(
                    "supervisor: server {} exited unexpectedly ({status}); stopping",
                    self.state.server_pid
                );
                for (pid, _) in &self.draining {
                    send(*pid, Signal::SIGTERM);
                }
                Some(ExitCode::from(
                    status.code().map_or(1, |c| c.clamp(1, 255) as u8),
                ))
            }
            _ => None,
        }
    }

    async fn stop(&mut self, how: Signal) -> ExitCode {
        log::info!("supervisor: stopping ({how})");
        send(self.state.server_pid, how);
        for (pid, _) in &self.draining {
            send(*pid, how);
        }
        // The servers stop within their grace periods; one that does not is killed, so that a
        // hung server cannot hold the pid file (and every restart) forever.
        let server = &self.config.server;
        let limit = Duration::from_secs(
            server.grace_period_seconds + server.graceful_shutdown_timeout_seconds + 10,
        );
        let children =
            std::iter::once(&mut self.current).chain(self.draining.iter_mut().map(|(_, old)| old));
        for child in children {
            if tokio::time::timeout(limit, child.wait()).await.is_err() {
                log::error!(
                    "supervisor: server {} did not stop within {} s; killing it",
                    child.id().unwrap_or_default(),
                    limit.as_secs()
                );
                let _ = child.kill().await;
            }
        }
        // Only what this supervisor wrote: the files carry its pid or its server's.
        let own = std::process::id().to_string();
        let server = self.state.server_pid.to_string();
        let ours = |path: &Path, pid: &str| {
            std::fs::read_to_string(path).is_ok_and(|text| text.trim() == pid)
        };
        let pid_file = PathBuf::from(&self.config.server.pid_file);
        let state = state_file(&self.config);
        let ready = ready_file(&self.config);
        if ours(&pid_file, &own) {
            let _ = std::fs::remove_file(pid_file);
        }
        if read_state(&state).is_some_and(|s| s.supervisor_pid == std::process::id()) {
            let _ = std::fs::remove_file(state);
        }
        if ours(&ready, &server) {
            let _ = std::fs::remove_file(ready);
        }
        ExitCode::SUCCESS
    }

    /// One reload. `Err` only when the service can no longer be kept up.
    async fn reload(&mut self) -> Result<(), ExitCode> {
        self.state.reloads += 1;
        let started_ms = epoch_ms();
        let outcome = self.try_reload().await;
        let (ok, message) = match outcome {
            Ok(message) => (true, message),
            Err(Failure::Kept(message)) => (false, message),
            Err(Failure::Lost(message)) => {
                log::error!("supervisor: {message}; exiting so that the service is restarted");
                self.state.last_reload = Some(Outcome {
                    ok: false,
                    message,
                    started_ms,
                    at: crate::observe::access_log::now(),
                });
                self.save();
                return Err(ExitCode::FAILURE);
            }
        };
        if ok {
            log::info!("supervisor: {message}");
        } else {
            log::error!("supervisor: reload refused: {message}");
        }
        self.state.last_reload = Some(Outcome {
            ok,
            message: clipped(message),
            started_ms,
            at: crate::observe::access_log::now(),
        });
        self.save();
        Ok(())
    }

    async fn try_reload(&mut self) -> Result<String, Failure> {
        let config = config::load(&self.file)
            .map_err(|e| Failure::Kept(format!("configuration rejected:\n{e}")))?;
        process::check(&config).map_err(Failure::Kept)?;
        if config.server.upgrade_sock != self.config.server.upgrade_sock
            || config.server.pid_file != self.config.server.pid_file
        {
            return Err(Failure::Kept(
                "server.upgrade_sock and server.pid_file cannot change in a reload; restart ccedge instead".into(),
            ));
        }
        // New listeners must be free now: once the old server hands over, a failure is an outage.
        let current = self.config.listen_addresses();
        for addr in config.listen_addresses() {
            if !current.contains(&addr) {
                std::net::TcpListener::bind(addr)
                    .map_err(|e| Failure::Kept(format!("cannot listen on {addr}: {e}")))?;
            }
        }
        let socket = PathBuf::from(&config.server.upgrade_sock);
        let _ = std::fs::remove_file(&socket);
        let mut next = spawn(&self.file, &config, true).map_err(Failure::Kept)?;
        let next_pid = next.id().unwrap_or_default();
        // The new server is ready for the sockets once it listens on the upgrade socket.
        let deadline = Instant::now() + SOCKET_WAIT;
        while !socket.exists() {
            if let Ok(Some(status)) = next.try_wait() {
                return Err(Failure::Kept(format!(
                    "the new server exited before taking over ({status})"
                )));
            }
            if Instant::now() > deadline {
                let _ = next.start_kill();
                return Err(Failure::Kept(
                    "the new server never opened the upgrade socket".into(),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        let old_pid = self.state.server_pid;
        send(old_pid, Signal::SIGQUIT);
        if let Err(e) = wait_ready(&mut next, &config).await {
            return Err(Failure::Lost(format!(
                "the new server failed after the handover: {e}"
            )));
        }
        let old = std::mem::replace(&mut self.current, next);
        self.draining.push((old_pid, old));
        self.state.server_pid = next_pid;
        self.state.admin = RunningAdmin::of(&config);
        self.config = config;
        let server = &self.config.server;
        // Past the cap, the oldest close their WebSockets (1001) and exit; those told already
        // are on their way out and do not count.
        let keeping: Vec<u32> = self
            .draining
            .iter()
            .map(|(pid, _)| *pid)
            .filter(|pid| !self.closing.contains(pid))
            .collect();
        let excess = keeping.len().saturating_sub(server.max_draining_processes);
        for pid in keeping.into_iter().take(excess) {
            log::info!(
                "supervisor: more than {} previous servers (server.max_draining_processes): \
                 server {pid} closes its WebSockets",
                server.max_draining_processes
            );
            send(pid, Signal::SIGTERM);
            self.closing.push(pid);
        }
        let grace = server.grace_period_seconds;
        let stays = if server.websocket_drain_seconds > grace {
            format!(
                "; its WebSockets stay until they close, {} s at most",
                server.websocket_drain_seconds
            )
        } else {
            String::new()
        };
        Ok(format!(
            "reloaded {}: server {next_pid} took over from {old_pid}, which finishes its requests within {grace} s{stays}",
            self.file.display(),
        ))
    }
}

/// Locks `server.pid_file` (as `ccedge -d` does) and writes this process's pid in it. Refused
/// while another process holds it: a second supervisor, even one finishing its graceful stop,
/// or a daemon. The file is this user's and readable by nobody else: a lock needs only an open
/// file, and anyone who could open it could hold every supervisor off.
fn claim_pid_file(config: &Config) -> Result<std::fs::File, String> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let path = &config.server.pid_file;
    // A stopping supervisor may remove the file between our open and our lock: the lock then
    // holds a file that is gone, so it is taken again on the file now at the path.
    for _ in 0..3 {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| format!("cannot open pid file {path}: {e}"))?;
        let opened = file
            .metadata()
            .map_err(|e| format!("cannot read pid file {path}: {e}"))?;
        if opened.uid() != nix::unistd::geteuid().as_raw() {
            return Err(format!(
                "pid file {path} belongs to another user (uid {}): remove it, or set \
                 server.pid_file to a path of ccedge's own",
                opened.uid()
            ));
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(held_message(config)),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock pid file {path}: {e}"))
            }
        }
        let current = std::fs::symlink_metadata(path).ok();
        if !current.is_some_and(|c| c.dev() == opened.dev() && c.ino() == opened.ino()) {
            continue;
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| file.set_len(0))
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(|e| format!("cannot write pid file {path}: {e}"))?;
        return Ok(file);
    }
    Err(format!(
        "pid file {path} keeps being replaced: is another ccedge starting and stopping?"
    ))
}

/// Whether another process holds `server.pid_file`'s lock (a supervisor or a daemon).
fn held(config: &Config) -> bool {
    held_file(&config.server.pid_file)
}

fn held_file(pid_file: &str) -> bool {
    std::fs::File::open(pid_file)
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
}

fn held_message(config: &Config) -> String {
    let path = &config.server.pid_file;
    let holder = std::fs::read_to_string(path).unwrap_or_default();
    let serving = read_state(&state_file(config))
        .map(|s| format!(", serving {}", s.config.display()))
        .unwrap_or_default();
    format!(
        "another ccedge (pid {}{serving}) holds the pid file {path}: stop it and wait until it \
         has exited (a graceful stop takes up to the grace period), or reload it with \
         `ccedge reload -c FILE`",
        holder.trim()
    )
}

/// Refuses `ccedge -d` while another ccedge holds `server.pid_file`: the daemon would move the
/// file aside and take it over.
pub fn pid_file_free(config: &Config) -> Result<(), String> {
    if held(config) {
        return Err(held_message(config));
    }
    Ok(())
}

enum Failure {
    /// Nothing changed: the running server goes on.
    Kept(String),
    /// The old server already handed over and the new one is gone.
    Lost(String),
}

fn ready_file(config: &Config) -> PathBuf {
    PathBuf::from(format!("{}.ready", config.server.pid_file))
}

fn spawn(file: &Path, config: &Config, upgrade: bool) -> Result<Child, String> {
    let ready = ready_file(config);
    let _ = std::fs::remove_file(&ready);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ccedge binary: {e}"))?;
    let mut command = Command::new(exe);
    if upgrade {
        command.arg("-u");
    }
    command.arg("-c").arg(file).env(READY_FILE_ENV, &ready);
    command
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))
}

/// Waits until `child` reports it is serving (its pid in the ready file).
async fn wait_ready(child: &mut Child, config: &Config) -> Result<(), String> {
    let pid = child.id().unwrap_or_default().to_string();
    let ready = ready_file(config);
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let reported = crate::observe::own_files::read_own(&ready, 64);
        if reported.is_some_and(|p| String::from_utf8_lossy(&p).trim() == pid) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("server exited during start ({status})"));
        }
        if Instant::now() > deadline {
            return Err("server did not start serving in time".into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The admin listener of the configuration the supervisor holding `config`'s pid file runs,
/// when one does: `Some(None)` when that configuration has none.
pub fn running_admin(config: &Config) -> Option<Option<crate::config::AdminSettings>> {
    let state = read_state(&state_file(config))?;
    if !(held(config) && alive(state.supervisor_pid)) {
        return None;
    }
    Some(state.admin.map(|a| crate::config::AdminSettings {
        listen: a.listen,
        hosts: Vec::new(),
        token: a.token.map(crate::config::Secret),
    }))
}

/// `ccedge reopen -c FILE`: has the running ccedge (its supervisor, which tells every server,
/// or a daemon) reopen its access log, and waits until the file is there again.
pub fn reopen(file: &Path) -> ExitCode {
    let files = match config::process_files(file) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("ccedge: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid_file = &files.pid_file;
    let holder = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    let Some(pid) = holder.filter(|pid| held_file(pid_file) && alive(*pid)) else {
        eprintln!(
            "ccedge: no ccedge holds {pid_file} (neither a supervisor nor a daemon); a ccedge \
             in the foreground reopens its access log on SIGUSR1: kill -USR1 <its pid>"
        );
        return ExitCode::FAILURE;
    };
    send(pid, Signal::SIGUSR1);
    let Some(log) = files.access_log else {
        println!("ccedge: told {pid}; its access log is not a file, nothing to reopen");
        return ExitCode::SUCCESS;
    };
    // After a rotation that moved the file away, the reopen creates it again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        if Instant::now() > deadline {
            eprintln!(
                "ccedge: told {pid}, but {} was not created again within 5 s; see its log",
                log.display()
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(POLL);
    }
    println!("ccedge: {pid} reopened {}", log.display());
    ExitCode::SUCCESS
}

/// `ccedge reload -c FILE`: asks the running supervisor to reload (after `FILE` passed the
/// checks of `-t`) and reports how it went.
pub fn reload(file: &Path, config: &Config) -> ExitCode {
    let path = state_file(config);
    // A live supervisor holds the pid file's lock: a state file alone may be a dead one's, and
    // its pid another process's now.
    let live = held(config);
    let Some(state) = read_state(&path).filter(|s| live && alive(s.supervisor_pid)) else {
        eprintln!(
            "ccedge: no ccedge supervisor is running for {} (no live state in {}); \
             start ccedge with `ccedge supervise -c FILE` to reload without dropping requests",
            file.display(),
            path.display()
        );
        return ExitCode::FAILURE;
    };
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    if state.config != file {
        eprintln!(
            "ccedge: the running supervisor serves {}, not {}; edit that file and reload it",
            state.config.display(),
            file.display()
        );
        return ExitCode::FAILURE;
    }
    // The answer is the first reload that began after this request (and so read the file as it
    // is now), whatever other reloads run meanwhile.
    let asked = epoch_ms();
    send(state.supervisor_pid, Signal::SIGHUP);
    let deadline = Instant::now() + SOCKET_WAIT + READY_WAIT;
    while Instant::now() < deadline {
        std::thread::sleep(POLL);
        let answered = read_state(&path).filter(|s| {
            s.last_reload
                .as_ref()
                .is_some_and(|r| r.started_ms >= asked)
        });
        if let Some(now) = answered {
            return match now.last_reload {
                Some(Outcome {
                    ok: true, message, ..
                }) => {
                    println!("ccedge: {message}");
                    ExitCode::SUCCESS
                }
                Some(Outcome { message, .. }) => {
                    eprintln!("ccedge: reload failed: {message}");
                    ExitCode::FAILURE
                }
                None => ExitCode::FAILURE,
            };
        }
    }
    eprintln!("ccedge: the supervisor did not report on the reload; see its log");
    ExitCode::FAILURE
}
