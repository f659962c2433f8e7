//! Pingora's log lines at the level an operator needs. Pingora writes routine events (a client
//! that left, a scanner's TLS handshake, the new process waiting for a reload's sockets) at
//! ERROR or WARN, where an operator must find only what needs action. Each line of Pingora's that
//! ccedge can trigger is classified here: routine events go to DEBUG and are counted in
//! `ccedge_routine_events_total{event}`, lifecycle details go to DEBUG, and lines that need
//! action keep their level and say what to do.

use log::{Level, Log, Metadata, Record};
use prometheus::IntCounter;
use std::sync::OnceLock;

/// What happens to a line of Pingora's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Routine: written at DEBUG and counted.
    Routine(Event),
    /// A detail: written at this level (never higher than its own).
    At(Level),
    /// Needs action: its level kept, this advice appended.
    Advice(&'static str),
}

/// Routine events, each a value of the `event` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A client left, reset its connection or broke off its request, or could not be answered.
    ClientError,
    /// A TLS handshake (or HTTP/2 preface) that failed: scanners, old clients, balancer checks.
    ClientHandshakeFailed,
    /// No handshake within `client_header_timeout_ms`.
    ClientHandshakeTimeout,
    /// An HTTP/2 connection closed after many malformed requests.
    ClientH2Malformed,
    /// The upstream stopped reading a request body (it answered early or closed).
    UpstreamStoppedReading,
    /// An upstream sent bytes on an idle pooled connection, which was closed.
    UpstreamIdleData,
    /// A response too large for the cache, passed on uncached.
    CacheTooLarge,
}

impl Event {
    const ALL: [Event; 7] = [
        Event::ClientError,
        Event::ClientHandshakeFailed,
        Event::ClientHandshakeTimeout,
        Event::ClientH2Malformed,
        Event::UpstreamStoppedReading,
        Event::UpstreamIdleData,
        Event::CacheTooLarge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::ClientError => "client_error",
            Event::ClientHandshakeFailed => "client_handshake_failed",
            Event::ClientHandshakeTimeout => "client_handshake_timeout",
            Event::ClientH2Malformed => "client_h2_malformed",
            Event::UpstreamStoppedReading => "upstream_stopped_reading",
            Event::UpstreamIdleData => "upstream_idle_data",
            Event::CacheTooLarge => "cache_too_large",
        }
    }

    fn counter(self) -> &'static IntCounter {
        static COUNTERS: OnceLock<Vec<IntCounter>> = OnceLock::new();
        let counters = COUNTERS.get_or_init(|| {
            Event::ALL
                .iter()
                .map(|e| super::metrics::routine_events(e.name()))
                .collect()
        });
        &counters[self as usize]
    }
}

/// Where a rule looks in the message.
#[derive(Clone, Copy)]
enum Text {
    Starts(&'static str),
    Contains(&'static str),
}

struct Rule {
    /// The line's target (its module), exactly.
    target: &'static str,
    text: Text,
    verdict: Verdict,
}

const fn rule(target: &'static str, text: Text, verdict: Verdict) -> Rule {
    Rule {
        target,
        text,
        verdict,
    }
}

use Text::{Contains, Starts};
use Verdict::{Advice, At, Routine};

const LISTENING: &str = "pingora_core::services::listening";
const TRANSFER: &str = "pingora_core::server::transfer_fd";
const SERVER: &str = "pingora_core::server";
const BOOTSTRAP: &str = "pingora_core::server::bootstrap_services";
const PROXY: &str = "pingora_proxy";
const PROXY_H1: &str = "pingora_proxy::proxy_h1";
const PROXY_CACHE: &str = "pingora_proxy::proxy_cache";
const HTTP_APP: &str = "pingora_core::apps::http_app";

const RELOAD_FAILED: &str = "ccedge: the reload failed; the running server goes on, see the \
                             supervisor's log";
const SOCKETS_LOST: &str = "ccedge: the new server may not have the listening sockets: check \
                            that it serves, restart ccedge if it does not";

/// Pingora's lines ccedge can trigger, by what they mean to an operator; the first match counts.
#[rustfmt::skip]
const RULES: &[Rule] = &[
    // Clients: scanners, disconnects, malformed traffic.
    rule(LISTENING, Starts("Downstream handshake error"), Routine(Event::ClientHandshakeFailed)),
    rule(LISTENING, Starts("Downstream handshake timeout"), Routine(Event::ClientHandshakeTimeout)),
    rule(LISTENING, Starts("Accept() failed"), Advice("ccedge: raise the open-files limit (LimitNOFILE) or lower the connection limits")),
    rule("pingora_core::apps", Starts("H2 handshake error"), Routine(Event::ClientHandshakeFailed)),
    rule("pingora_core::protocols::http::v2::server", Starts("tearing down downstream h2 connection"), Routine(Event::ClientH2Malformed)),
    // Whatever failed on the client's side of the exchange: it left, reset, cancelled an HTTP/2
    // stream, or sent a body it could not frame.
    rule(PROXY, Starts("Fail to proxy: Downstream"), Routine(Event::ClientError)),
    rule(PROXY, Starts("failed to send error response to downstream"), Routine(Event::ClientError)),
    // ccedge's own refusals (413, 421, 503), already in the access log and the metrics.
    rule(PROXY, Starts("Fail to proxy:  HTTPStatus"), At(Level::Debug)),
    rule(PROXY, Starts("Fail to proxy: Upstream"), Advice("ccedge: check the upstream named above")),
    rule(PROXY_CACHE, Starts("Fail to serve cache: Downstream"), Routine(Event::ClientError)),
    rule(PROXY_CACHE, Starts("failed to send error response to downstream"), Routine(Event::ClientError)),
    rule(PROXY_CACHE, Contains(", serving stale,"), At(Level::Debug)),
    rule(PROXY_H1, Starts("Downstream Error ignored during caching"), Routine(Event::ClientError)),
    rule(PROXY_H1, Starts("Downstream write error ignored during caching"), Routine(Event::ClientError)),
    rule(PROXY_H1, Starts("Error finish sending body to downstream"), Routine(Event::ClientError)),
    rule(PROXY_H1, Starts("send error, draining read buf"), Routine(Event::UpstreamStoppedReading)),
    rule(PROXY_H1, Starts("Fail to cache response"), Routine(Event::CacheTooLarge)),
    rule(PROXY_H1, Starts("Upstream body is already finished"), At(Level::Debug)),
    rule(HTTP_APP, Starts("HTTP server fails to"), Routine(Event::ClientError)),
    // Upstream connection pool.
    rule("pingora_core::connectors", Starts("Unexpected data read in idle connection"), Routine(Event::UpstreamIdleData)),
    rule("pingora_pool::connection", Starts("Data received on idle client connection"), Routine(Event::UpstreamIdleData)),
    rule("pingora_pool::connection", Starts("Fail to get pool node"), At(Level::Debug)),
    rule("pingora_core::protocols::tls::boringssl_openssl::stream", Starts("Clearing dirty TLS error stack"), At(Level::Debug)),
    // A client that reset its connection before ccedge closed it.
    rule("pingora_core::protocols::tls::boringssl_openssl::server", Starts("TLS shutdown failed"), Routine(Event::ClientError)),
    // ccedge logs node health changes itself.
    rule("pingora_load_balancing", Contains(" becomes unhealthy"), At(Level::Debug)),
    rule("pingora_load_balancing", Contains(" becomes healthy"), At(Level::Debug)),
    // Reloads: the new process waits for the sockets, the old one hands them over.
    rule(TRANSFER, Starts("No incoming socket transfer"), At(Level::Debug)),
    rule(TRANSFER, Contains("not ready, will try again"), At(Level::Debug)),
    rule(TRANSFER, Starts("Giving up reading socket"), Advice(RELOAD_FAILED)),
    rule(TRANSFER, Starts("Error accepting socket transfer"), Advice(RELOAD_FAILED)),
    rule(BOOTSTRAP, Starts("Bootstrap failed"), Advice(RELOAD_FAILED)),
    rule(TRANSFER, Starts("Max retry"), Advice(SOCKETS_LOST)),
    rule(TRANSFER, Contains("not ready after retries"), Advice(SOCKETS_LOST)),
    rule(TRANSFER, Starts("Error sending socket"), Advice(SOCKETS_LOST)),
    rule(SERVER, Starts("Unable to send listener sockets"), Advice(SOCKETS_LOST)),
    rule("pingora_core::listeners::l4", Contains(" is in use, will try again"), Advice("ccedge: another process holds this port (ss -ltnp shows which)")),
    // WebSockets still open at the end of a graceful stop are cut: routine for agents' desktops.
    rule(SERVER, Contains(" did not exit within "), At(Level::Info)),
    // Lifecycle details.
    rule(BOOTSTRAP, Starts("Bootstrap starting"), At(Level::Debug)),
    rule(SERVER, Contains(" will wait for dependencies"), At(Level::Debug)),
    rule(SERVER, Starts("Starting service:"), At(Level::Debug)),
    rule(SERVER, Starts("Trying to send socks"), At(Level::Debug)),
    rule(SERVER, Starts("Broadcasting graceful shutdown"), At(Level::Debug)),
    rule(SERVER, Starts("Graceful shutdown started!"), At(Level::Debug)),
    rule(SERVER, Starts("Broadcast graceful shutdown complete"), At(Level::Debug)),
    rule(SERVER, Starts("service '"), At(Level::Debug)),
    rule(SERVER, Starts("Waiting for"), At(Level::Debug)),
    rule(SERVER, Contains(" exited after "), At(Level::Debug)),
];

/// What becomes of a line of Pingora's at `target` saying `message`; `None`: it stays as it is.
pub fn classify(target: &str, message: &str) -> Option<Verdict> {
    RULES
        .iter()
        .find(|r| {
            r.target == target
                && match r.text {
                    Starts(s) => message.starts_with(s),
                    Contains(s) => message.contains(s),
                }
        })
        .map(|r| r.verdict)
}

/// A logger that passes Pingora's lines through `classify` on their way to `inner`.
pub struct Levels<L> {
    inner: L,
}

/// Longest line of Pingora's written: an upstream's unparseable answer is quoted whole (1 MiB).
const LINE_MAX: usize = 4096;

impl<L: Log> Levels<L> {
    /// Every event's counter is registered now, so that each series exists from the start.
    pub fn new(inner: L) -> Levels<L> {
        let _ = Event::ClientError.counter();
        Levels { inner }
    }

    fn write(&self, record: &Record, level: Level, args: std::fmt::Arguments) {
        let metadata = Metadata::builder()
            .level(level)
            .target(record.target())
            .build();
        if self.inner.enabled(&metadata) {
            self.inner.log(
                &Record::builder()
                    .metadata(metadata)
                    .args(args)
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            );
        }
    }
}

impl<L: Log> Log for Levels<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if record.level() > Level::Info || !record.target().starts_with("pingora") {
            return self.inner.log(record);
        }
        let mut formatted;
        let message = match record.args().as_str() {
            Some(text) => text,
            None => {
                formatted = record.args().to_string();
                if formatted.len() > LINE_MAX {
                    let mut end = LINE_MAX;
                    while !formatted.is_char_boundary(end) {
                        end -= 1;
                    }
                    formatted.truncate(end);
                    formatted.push_str(" (cut)");
                }
                &formatted
            }
        };
        match classify(record.target(), message) {
            None => self.write(record, record.level(), format_args!("{message}")),
            Some(Routine(event)) => {
                event.counter().inc();
                self.write(record, Level::Debug, format_args!("{message}"));
            }
            Some(At(level)) => {
                self.write(record, level.max(record.level()), format_args!("{message}"))
            }
            Some(Advice(advice)) => {
                self.write(record, record.level(), format_args!("{message} ({advice})"))
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routine_lines_are_debug_and_counted() {
        let cases = [
            (LISTENING, "Downstream handshake error from 127.0.0.1:5:  TLSHandshakeFailure context: TLS accept() failed", Event::ClientHandshakeFailed),
            (PROXY, "Fail to proxy: Downstream ConnectionClosed context: while reading request headers, downstream session type: h1", Event::ClientError),
            (PROXY, "Fail to proxy: Downstream WriteError context: Peer: addr: 127.0.0.1:8 cause: Broken pipe (os error 32), status: 0, tries: 1, retry: false, GET /x, Host: a", Event::ClientError),
            (PROXY_CACHE, "Fail to serve cache: Downstream WriteError context: while writing body cause: Broken pipe (os error 32), GET /desktop/a.js, Host: a", Event::ClientError),
            ("pingora_core::connectors", "Unexpected data read in idle connection", Event::UpstreamIdleData),
            (PROXY, "Fail to proxy: Downstream H2Error context: Client closed H2 cause: user error: inactive stream, status: 0", Event::ClientError),
            (PROXY, "Fail to proxy: Downstream InvalidChunk context: invalid chunk size, status: 400", Event::ClientError),
            ("pingora_core::protocols::tls::boringssl_openssl::server", "TLS shutdown failed, error:0A000126", Event::ClientError),
            (PROXY_H1, "Fail to cache response: Internal InternalError context: body longer than 8 bytes: not cached, GET /big", Event::CacheTooLarge),
        ];
        for (target, message, event) in cases {
            assert_eq!(classify(target, message), Some(Routine(event)), "{message}");
        }
    }

    #[test]
    fn reload_chatter_is_debug_and_failures_say_what_to_do() {
        assert_eq!(
            classify(
                TRANSFER,
                "No incoming socket transfer, sleep 1s and try again"
            ),
            Some(At(Level::Debug))
        );
        assert_eq!(
            classify(SERVER, "Service runtime cc did not exit within 1s"),
            Some(At(Level::Info))
        );
        assert_eq!(
            classify(
                TRANSFER,
                "Giving up reading socket from: /run/x.sock, error: x"
            ),
            Some(Advice(RELOAD_FAILED))
        );
        assert_eq!(
            classify(SERVER, "Graceful shutdown broadcast failed: x"),
            None
        );
        assert_eq!(
            classify(SERVER, "Graceful shutdown: grace period 3s starts"),
            None
        );
        assert_eq!(
            classify(SERVER, "Unable to send listener sockets to new process: x"),
            Some(Advice(SOCKETS_LOST))
        );
    }

    #[test]
    fn upstream_and_internal_failures_stay_errors() {
        let upstream = "Fail to proxy: Upstream ConnectRefused context: Peer: addr: 10.0.0.1:8445, status: 502, tries: 1, retry: false, GET /x, Host: a";
        assert!(matches!(classify(PROXY, upstream), Some(Advice(_))));
        let internal = "Fail to proxy: Internal InternalError context: request reached the upstream without a client identity";
        assert_eq!(classify(PROXY, internal), None);
        // The same words from another module are not the line the rule is about.
        assert_eq!(
            classify("pingora_core::server", "Fail to proxy: Downstream x"),
            None
        );
        assert_eq!(classify(LISTENING, "Shutting down 127.0.0.1:443"), None);
    }

    /// Records what reaches it.
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<(Level, String)>>);

    impl Log for Seen {
        fn enabled(&self, metadata: &Metadata) -> bool {
            metadata.level() <= Level::Info
        }
        fn log(&self, record: &Record) {
            self.0
                .lock()
                .unwrap()
                .push((record.level(), record.args().to_string()));
        }
        fn flush(&self) {}
    }

    fn log(levels: &Levels<Seen>, level: Level, target: &str, args: std::fmt::Arguments) {
        levels.log(
            &Record::builder()
                .level(level)
                .target(target)
                .args(args)
                .build(),
        );
    }

    #[test]
    fn the_logger_drops_routine_lines_below_its_level_and_counts_them() {
        let levels = Levels::new(Seen::default());
        let before = Event::ClientError.counter().get();
        let peer = "127.0.0.1:9";
        log(
            &levels,
            Level::Error,
            PROXY,
            format_args!("Fail to proxy: Downstream ReadError context: {peer}"),
        );
        log(
            &levels,
            Level::Error,
            PROXY,
            format_args!("Fail to proxy: Upstream ConnectRefused context: {peer}"),
        );
        log(
            &levels,
            Level::Error,
            "ccedge::finesse",
            format_args!("Fail to proxy: Downstream x"),
        );
        log(
            &levels,
            Level::Debug,
            PROXY,
            format_args!("Fail to proxy: Upstream y"),
        );
        let long = "x".repeat(2 * LINE_MAX);
        log(
            &levels,
            Level::Warn,
            "pingora_core::protocols::http::v1::client",
            format_args!("{long}"),
        );
        let mut seen = levels.inner.0.lock().unwrap().clone();
        let (_, cut) = seen.pop().unwrap();
        assert_eq!(cut.len(), LINE_MAX + " (cut)".len());
        assert_eq!(Event::ClientError.counter().get(), before + 1);
        assert_eq!(
            seen,
            [
                (Level::Error, "Fail to proxy: Upstream ConnectRefused context: 127.0.0.1:9 (ccedge: check the upstream named above)".to_string()),
                (Level::Error, "Fail to proxy: Downstream x".to_string()),
                (Level::Debug, "Fail to proxy: Upstream y".to_string()),
            ]
        );
    }
}
