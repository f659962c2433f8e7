//! The access log: one JSON object per request, written by a dedicated thread so that a slow
//! disk or a blocked stdout never stalls a worker. Lines are handed over through a bounded
//! queue; if the writer falls that far behind, lines are dropped and the drop is reported.

use crate::config::AccessLogTarget;
use serde::Serialize;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

const QUEUE_LINES: usize = 65_536;

/// One request, as the contract lists it (plus a few fields that help an operator).
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub service: &'a str,
    pub route: Option<&'a str>,
    pub client_ip: Option<String>,
    /// Who the request was from: the Basic user name or the JWT `sub`.
    pub user: Option<&'a str>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub bytes_sent: usize,
    pub duration_ms: f64,
    pub upstream: Option<&'a str>,
    pub upstream_status: Option<u16>,
    /// Upstream connections tried (more than one after a failover retry).
    pub attempts: u8,
    pub cache: &'a str,
    pub tracking_id: Option<&'a str>,
    pub error: Option<String>,
}

enum Message {
    Line(Vec<u8>),
    Stop,
}

pub struct AccessLog {
    enabled: bool,
    output: Mutex<Option<Box<dyn Write + Send>>>,
    sender: OnceLock<Option<SyncSender<Message>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the destination now (so a bad path fails at start), writes nothing until the first
    /// request. The writer thread starts on first use, after any daemonizing fork.
    pub fn open(target: &AccessLogTarget) -> Result<Self, String> {
        let output: Option<Box<dyn Write + Send>> = match target {
            AccessLogTarget::Off => None,
            AccessLogTarget::Stdout => Some(Box::new(std::io::stdout())),
            AccessLogTarget::File(path) => Some(Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open access log {}: {e}", path.display()))?,
            )),
        };
        Ok(AccessLog {
            enabled: output.is_some(),
            output: Mutex::new(output),
            sender: OnceLock::new(),
            worker: Mutex::new(None),
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn write(&self, entry: &Entry) {
        let Some(sender) = self.sender.get_or_init(|| self.start()) else {
            return;
        };
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = sender.try_send(Message::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start(&self) -> Option<SyncSender<Message>> {
        let output = self.output.lock().ok()?.take()?;
        let (sender, receiver) = sync_channel(QUEUE_LINES);
        let dropped = self.dropped.clone();
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(output, receiver, &dropped))
            .map_err(|e| log::error!("access log writer could not start: {e}"))
            .ok()?;
        *self.worker.lock().ok()? = Some(handle);
        Some(sender)
    }

    /// Writes out everything queued so far and stops the writer (at process exit). Waits at
    /// most a few seconds: a destination that does not take writes must not hold the exit.
    pub fn close(&self) {
        let Some(Some(sender)) = self.sender.get() else {
            return;
        };
        if sender.try_send(Message::Stop).is_err() {
            return;
        }
        let Some(handle) = self.worker.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !handle.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }

    /// Whether lines are written at all (`access_log: off` writes none).
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

fn writer(output: Box<dyn Write + Send>, receiver: Receiver<Message>, dropped: &AtomicU64) {
    let mut out = BufWriter::with_capacity(64 * 1024, output);
    let mut failing = false;
    let mut report = |result: std::io::Result<()>| match (result, failing) {
        (Err(e), false) => {
            log::error!("access log write failed: {e}; lines are being lost");
            failing = true;
        }
        (Ok(()), true) => {
            log::info!("access log writes work again");
            failing = false;
        }
        _ => {}
    };
    while let Ok(message) = receiver.recv() {
        let mut stop = false;
        let mut next = Some(message);
        while let Some(message) = next {
            match message {
                Message::Line(line) => report(out.write_all(&line)),
                Message::Stop => stop = true,
            }
            next = receiver.try_recv().ok();
        }
        report(out.flush());
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            log::warn!("{lost} access log lines dropped: the log destination is not keeping up");
        }
        if stop {
            break;
        }
    }
}

/// The protocol a request came in on, as logged.
pub fn protocol(session: &pingora::protocols::http::ServerSession) -> &'static str {
    if session.is_http2() {
        return "HTTP/2";
    }
    match session.req_header().version {
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// Time since `started` in milliseconds, to the microsecond.
pub fn millis_since(started: std::time::Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Current time as RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_and_flushes_on_close() {
        let path = std::env::temp_dir().join(format!("ccedge-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::open(&AccessLogTarget::File(path.clone())).unwrap();
        for status in [200u16, 421] {
            log.write(&Entry {
                time: now(),
                service: "cc",
                route: Some("publisher"),
                client_ip: Some("127.0.0.1".into()),
                user: None,
                method: "GET",
                host: None,
                path: "/a\"b",
                protocol: "HTTP/1.1",
                status,
                bytes_sent: 3,
                duration_ms: 1.5,
                upstream: None,
                upstream_status: None,
                attempts: 0,
                cache: "BYPASS",
                tracking_id: Some("T"),
                error: None,
            });
        }
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["status"], 421);
        assert_eq!(lines[0]["path"], "/a\"b");
        assert!(lines[0]["upstream"].is_null());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn off_writes_nothing() {
        let log = AccessLog::open(&AccessLogTarget::Off).unwrap();
        assert!(log.sender.get_or_init(|| log.start()).is_none());
        log.close();
    }

    #[test]
    fn unwritable_path_fails_at_open() {
        let err = AccessLog::open(&AccessLogTarget::File("/nonexistent-dir/x.log".into()))
            .err()
            .unwrap();
        assert!(err.contains("/nonexistent-dir/x.log"), "{err}");
    }
}
