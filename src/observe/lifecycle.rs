//! Where this process stands: starting, ready, draining (an administrator asked, `POST /drain`)
//! or stopping (a reload handed its sockets over, or a stop). The admin listener answers
//! `/readyz` from it; every client connection watches it: while draining or stopping, a
//! kept-alive HTTP/1.1 connection is closed after its next answer (`Connection: close`) and an
//! HTTP/2 connection gets GOAWAY, while WebSockets go on until they end.

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Ready,
    Draining,
    Stopping,
}

impl Readiness {
    pub fn name(self) -> &'static str {
        match self {
            Readiness::Starting => "starting",
            Readiness::Ready => "ready",
            Readiness::Draining => "draining",
            Readiness::Stopping => "stopping",
        }
    }
}

pub struct Lifecycle {
    origin: Instant,
    running: AtomicBool,
    stopping: AtomicBool,
    drained: AtomicBool,
    /// True once open WebSockets are to close (with 1001): a stop, or a drain at its limit.
    websockets_closing: watch::Sender<bool>,
    websockets: AtomicUsize,
    /// A SIGTERM (a stop, or the supervisor's cap on draining processes) and a SIGINT (stop
    /// now) arrived: watched for the whole life of the process, so that none is missed while
    /// it drains.
    terminated: AtomicBool,
    interrupted: AtomicBool,
    /// What client connections watch in place of the server's shutdown: true while draining or
    /// stopping.
    closing: watch::Sender<bool>,
    /// Client connections open now, on every service of this process.
    open: AtomicUsize,
    /// Connections accepted, and of those, how many reached the proxy (their handshake done):
    /// the difference is in its handshake (or failed it).
    accepted: AtomicU64,
    entered: AtomicU64,
    /// When the last connection was accepted (`since_ms`).
    last_accept_ms: AtomicU64,
}

impl Lifecycle {
    pub fn new() -> Arc<Self> {
        Arc::new(Lifecycle {
            running: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            websockets_closing: watch::channel(false).0,
            websockets: AtomicUsize::new(0),
            terminated: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            closing: watch::channel(false).0,
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            entered: AtomicU64::new(0),
            last_accept_ms: AtomicU64::new(0),
            origin: Instant::now(),
        })
    }

    pub fn readiness(&self) -> Readiness {
        if self.stopping.load(Ordering::Acquire) {
            Readiness::Stopping
        } else if self.drained.load(Ordering::Acquire) {
            Readiness::Draining
        } else if self.running.load(Ordering::Acquire) {
            Readiness::Ready
        } else {
            Readiness::Starting
        }
    }

    /// Starts (`true`) or ends a drain; whether that changed anything.
    pub fn drain(&self, on: bool) -> bool {
        let changed = self.drained.swap(on, Ordering::AcqRel) != on;
        self.update();
        changed
    }

    pub fn terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Acquire)
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.update();
    }

    fn update(&self) {
        let closing = self.stopping.load(Ordering::Acquire) || self.drained.load(Ordering::Acquire);
        // Only the turn to closing is news: HTTP/2 connections answer any news with GOAWAY,
        // and the end of a drain must not send them away. Connections read the value itself.
        self.closing.send_if_modified(|now| {
            let news = closing && !*now;
            *now = closing;
            news
        });
    }

    /// Whether connections are to close after their current request (draining or stopping).
    pub fn closing(&self) -> bool {
        self.drained.load(Ordering::Relaxed) || self.stopping.load(Ordering::Relaxed)
    }

    /// What a new client connection watches for its end. One that opens while the process
    /// drains is told at the next `ANNOUNCE_EVERY` (see `announce`), after its first requests:
    /// an HTTP/2 connection sent GOAWAY at once would have its first request refused, and a
    /// client whose balancer has not yet noticed the drain would be sent around in a loop.
    /// (HTTP/1.1 reads the state itself: its first answer says `Connection: close`.)
    pub fn connection_watch(&self) -> ShutdownWatch {
        self.closing.subscribe()
    }

    /// Tells again, while draining or stopping, every connection that opened since.
    fn announce(&self) {
        if self.closing() {
            self.closing.send_modify(|_| {});
        }
    }

    /// Counts a client connection until the guard is dropped.
    pub fn connection(self: &Arc<Self>) -> OpenConnection {
        self.entered.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// A listener accepted a connection (its handshake follows).
    pub fn accepted(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_accept_ms.store(now, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Release);
    }

    /// Whether a connection accepted within `wait` may still be in its handshake: it is
    /// counted as open only once the handshake is done. (A handshake that failed is never
    /// counted either, hence the bound: a port scan must not hold a stopping process.)
    pub fn handshakes_pending(&self, wait: Duration) -> bool {
        let accepted = self.accepted.load(Ordering::Acquire);
        let entered = self.entered.load(Ordering::Relaxed);
        let last = Duration::from_millis(self.last_accept_ms.load(Ordering::Relaxed));
        accepted > entered && self.origin.elapsed() < last + wait
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// What each open WebSocket waits on to close (1001).
    pub fn websockets_closing(&self) -> watch::Receiver<bool> {
        self.websockets_closing.subscribe()
    }

    /// Has every open WebSocket (and any opened later) close with 1001.
    pub fn close_websockets(&self) {
        self.websockets_closing.send_replace(true);
    }

    pub fn websocket_opened(&self) {
        self.websockets.fetch_add(1, Ordering::Relaxed);
    }

    pub fn websocket_closed(&self) {
        self.websockets.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open_websockets(&self) -> usize {
        self.websockets.load(Ordering::Relaxed)
    }
}

pub struct OpenConnection(Arc<Lifecycle>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often connections opened during a drain are told to close.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// Follows the server's phases: ready once every service runs, stopping once a reload or a
/// stop has the listeners close (the moment Pingora's own shutdown begins).
pub struct PhaseWatch {
    lifecycle: Arc<Lifecycle>,
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    /// `server.pid_file`, and whether this process took over from another (a reload).
    pid_file: String,
    upgrade: bool,
}

impl PhaseWatch {
    /// `phases` must be subscribed before the server starts, so that no phase is missed.
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        phases: broadcast::Receiver<ExecutionPhase>,
        (pid_file, upgrade): (String, bool),
    ) -> Self {
        PhaseWatch {
            lifecycle,
            phases: Mutex::new(Some(phases)),
            pid_file,
            upgrade,
        }
    }

    /// Once this process serves: a drain asked of the process it took over from (up to the
    /// hand-over) goes on; a fresh start begins ready.
    fn adopt_drain(&self) {
        if !self.upgrade {
            crate::observe::draining::set_drained(&self.pid_file, false);
        } else if crate::observe::draining::drained(&self.pid_file) {
            self.lifecycle.drain(true);
            log::info!("drained before this reload: /readyz answers 503 until DELETE /drain");
        }
    }
}

#[async_trait]
impl BackgroundService for PhaseWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        let (mut starting, mut running) = (true, true);
        // Taken once the server runs, as Pingora's own: a signal during the start keeps its
        // default action (the process ends).
        let (mut terminate, mut interrupt) = (None, None);
        let mut announce = tokio::time::interval(ANNOUNCE_EVERY);
        loop {
            tokio::select! {
                phase = phases.recv(), if starting => match phase {
                    Ok(ExecutionPhase::Running) => {
                        starting = false;
                        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                            (Ok(t), Ok(i)) => (terminate, interrupt) = (Some(t), Some(i)),
                            _ => log::error!(
                                "cannot watch SIGTERM and SIGINT: a draining process will not see them"
                            ),
                        }
                        self.adopt_drain();
                        self.lifecycle.running.store(true, Ordering::Release);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => starting = false,
                },
                _ = shutdown.changed(), if running => {
                    self.lifecycle.stop();
                    running = false;
                }
                _ = announce.tick() => self.lifecycle.announce(),
                Some(()) = next(&mut terminate) => {
                    self.lifecycle.terminated.store(true, Ordering::Release);
                }
                Some(()) = next(&mut interrupt) => {
                    self.lifecycle.interrupted.store(true, Ordering::Release);
                }
            }
        }
    }
}

/// The next signal of `stream`, or never without one.
async fn next(stream: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match stream {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_is_seen_by_open_connections_and_new_ones() {
        let lifecycle = Lifecycle::new();
        lifecycle.running.store(true, Ordering::Release);
        assert_eq!(lifecycle.readiness(), Readiness::Ready);
        let mut open = lifecycle.connection_watch();
        assert!(!open.has_changed().unwrap());
        assert!(lifecycle.drain(true));
        assert!(!lifecycle.drain(true), "asked twice, changed once");
        assert_eq!(lifecycle.readiness(), Readiness::Draining);
        assert!(open.has_changed().unwrap() && *open.borrow_and_update());
        // A connection opened while draining reads the state, and is told at the next
        // announcement; so are the others, again.
        let mut new = lifecycle.connection_watch();
        assert!(!new.has_changed().unwrap() && *new.borrow());
        lifecycle.announce();
        assert!(new.has_changed().unwrap() && *new.borrow_and_update());
        assert!(lifecycle.drain(false));
        assert!(!new.has_changed().unwrap(), "the end of a drain is no news");
        assert!(!*new.borrow());
        lifecycle.announce();
        assert!(
            !new.has_changed().unwrap(),
            "nothing to announce when ready"
        );
        assert_eq!(lifecycle.readiness(), Readiness::Ready);
        let after = lifecycle.connection_watch();
        assert!(!after.has_changed().unwrap() && !*after.borrow());
        // A stop is for good: ending a drain does not undo it.
        lifecycle.drain(true);
        lifecycle.stop();
        lifecycle.drain(false);
        assert_eq!(lifecycle.readiness(), Readiness::Stopping);
        assert!(*lifecycle.connection_watch().borrow());
    }

    #[test]
    fn connections_are_counted_while_open() {
        let lifecycle = Lifecycle::new();
        let a = lifecycle.connection();
        let b = lifecycle.connection();
        assert_eq!(lifecycle.open_connections(), 2);
        drop(a);
        drop(b);
        assert_eq!(lifecycle.open_connections(), 0);
    }
}
