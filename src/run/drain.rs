//! How a server process ends once it stopped accepting (Pingora's graceful shutdown, through
//! pingora-core's `Drain`). After a reload's hand-over, its WebSockets stay until they close, up
//! to `server.websocket_drain_seconds`; its HTTP requests have the grace period; it exits as
//! soon as its last connection ends. On a stop, its WebSockets are closed at once (1001) and
//! its HTTP requests have the grace period. Meanwhile it reports what it holds (for `/status`
//! of the current process), closes the WebSockets of users revoked after the reload, answers
//! SIGTERM (close the WebSockets now: the supervisor's cap, or a stop) and SIGINT (exit now),
//! which `observe::lifecycle::PhaseWatch` watches for the whole life of the process. It hands
//! its lockouts and kept verdicts to the next process at once, and again each second they
//! change (`state::handover`).

use crate::observe::admin::StatusSource;
use crate::observe::draining::{self, Report};
use crate::observe::lifecycle::Lifecycle;
use crate::state::handover::Handover;
use pingora::server::{Drain, ExecutionPhase};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// How often the process looks at its connections and writes its report.
const TICK: Duration = Duration::from_millis(200);
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long after its last accept a stopping process waits for handshakes still under way (a
/// client's ClientHello follows its connection by a round trip).
const HANDSHAKE_WAIT: Duration = Duration::from_secs(3);
/// How long closed WebSockets have to finish their closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

pub struct ProcessDrain {
    pub lifecycle: Arc<Lifecycle>,
    pub websocket_drain: Duration,
    /// The longest handshake (TLS, PROXY header) of any service: a connection accepted before
    /// the stop is counted once its handshake is done.
    pub handshake_timeout: Duration,
    /// Subscribed before the server started: says whether the stop is a reload's hand-over.
    pub phases: broadcast::Receiver<ExecutionPhase>,
    pub pid_file: String,
    /// Where revocations are applied.
    pub sources: Vec<Arc<dyn StatusSource>>,
    /// Writes the lockouts and kept verdicts for the next process.
    pub handover: Arc<Handover>,
}

impl ProcessDrain {
    /// Whether the server handed its sockets over (a reload) rather than stopping.
    fn handed_over(&mut self) -> bool {
        let mut handed_over = false;
        loop {
            match self.phases.try_recv() {
                Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => handed_over = true,
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return handed_over,
            }
        }
    }

    fn revoke_since(&self, since_ms: u128) -> u128 {
        let mut latest = since_ms;
        for (at, user) in draining::revocations_since(&self.pid_file, since_ms) {
            let closed: usize = self
                .sources
                .iter()
                .filter_map(|s| s.revoke_user(&user))
                .sum();
            log::info!(
                "draining server: user {user:?} revoked after the reload: {closed} WebSocket(s) closed"
            );
            latest = latest.max(at);
        }
        latest
    }

    async fn run(mut self, grace: Duration) {
        let started = Instant::now();
        let handed_over = self.handed_over();
        if handed_over {
            // First: the new process waits for it before it judges a credential.
            self.handover.hand_over();
        }
        let lifecycle = self.lifecycle.clone();
        log::info!(
            "draining server: {} client connection(s) open, {} of them WebSockets",
            lifecycle.open_connections(),
            lifecycle.open_websockets()
        );
        let websockets_until = if handed_over {
            started + self.websocket_drain.max(grace)
        } else {
            started
        };
        if handed_over && !self.websocket_drain.is_zero() && lifecycle.open_websockets() > 0 {
            log::info!(
                "draining server: its WebSockets stay until they close, for up to {} s \
                 (server.websocket_drain_seconds)",
                self.websocket_drain.as_secs()
            );
        }
        let since = crate::observe::access_log::now();
        let close_at = chrono::Utc::now()
            + chrono::Duration::from_std(websockets_until - started).unwrap_or_default();
        let close_at = close_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let pid = std::process::id();
        let mut revoked_since = crate::observe::access_log::epoch_ms();
        let mut closed_at: Option<Instant> = None;
        let mut reported = started - REPORT_EVERY;
        let handshakes = self.handshake_timeout.min(HANDSHAKE_WAIT).min(grace);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let elapsed = now.duration_since(started);
            if lifecycle.interrupted() {
                log::info!("draining server: SIGINT: exiting now");
                break;
            }
            let terminated = lifecycle.terminated();
            if closed_at.is_none() && (now >= websockets_until || terminated) {
                if lifecycle.open_websockets() > 0 {
                    log::info!(
                        "draining server: closing its {} WebSocket(s) (1001)",
                        lifecycle.open_websockets()
                    );
                }
                lifecycle.close_websockets();
                closed_at = Some(now);
            }
            // A connection accepted just before the stop is counted once its handshake is done.
            if lifecycle.open_connections() == 0 && !lifecycle.handshakes_pending(handshakes) {
                break;
            }
            // HTTP requests have the grace period; WebSockets until they are closed.
            let websockets_done = lifecycle.open_websockets() == 0
                || closed_at.is_some_and(|at| now.duration_since(at) >= CLOSE_WAIT);
            if elapsed >= grace && websockets_done {
                break;
            }
            if handed_over {
                revoked_since = self.revoke_since(revoked_since);
                if now.duration_since(reported) >= REPORT_EVERY {
                    reported = now;
                    self.handover.write();
                    draining::write_report(
                        &self.pid_file,
                        &Report {
                            pid,
                            since: since.clone(),
                            open_connections: lifecycle.open_connections(),
                            websockets: lifecycle.open_websockets(),
                            websockets_close_at: close_at.clone(),
                        },
                    );
                }
            }
        }
        if handed_over {
            self.handover.write();
        }
        draining::remove_report(&self.pid_file, pid);
        log::info!(
            "draining server: done after {} s ({} connection(s) left)",
            started.elapsed().as_secs(),
            lifecycle.open_connections()
        );
    }
}

impl Drain for ProcessDrain {
    fn wait(self: Box<Self>, grace: Duration) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                log::error!("draining server: {e}; waiting out the grace period");
                std::thread::sleep(grace);
                return;
            }
        };
        runtime.block_on(self.run(grace));
    }
}
