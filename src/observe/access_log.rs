//! The access log: one JSON object per request, written by a dedicated thread so that a slow
//! disk or a blocked stdout never stalls a worker. A request's line is formatted in a buffer of
//! its worker thread and appended to a shared batch; the writer takes the batch every
//! `FLUSH_EVERY` (sooner once it is large) and writes it with one call, so a busy proxy makes a
//! few writes a second instead of one per request and wakes no thread per line. If the writer
//! falls far behind, lines are dropped and the drop is reported. `reopen` (SIGUSR1, after a
//! log rotation) has the writer finish the batch on the old file, then open the path again.

use crate::config::AccessLogTarget;
use serde::Serialize;
use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a line may wait for the writer.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this large is written at once, without waiting for `FLUSH_EVERY`.
const WRITE_AT_BYTES: usize = 256 * 1024;
/// Past this much unwritten text (about 40,000 lines), lines are dropped and counted.
const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// One request, as the contract lists it (plus a few fields that help an operator).
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: Timestamp,
    pub service: &'a str,
    pub route: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
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
    /// The last attempt's time to connect to the upstream (0 on a reused connection).
    pub upstream_connect_ms: Option<f64>,
    /// From the request's sending (its body included) to the upstream's response header.
    pub upstream_header_ms: Option<f64>,
    /// Response body bytes received from the upstream (0 when it sent none, or for a cache hit).
    pub upstream_bytes: u64,
    /// Upstream connections tried (more than one after a failover retry).
    pub attempts: u8,
    pub cache: &'a str,
    /// What the external check said: `allowed`, `denied` or `error` (a call made), or
    /// `allowed_kept` and `denied_kept` (a verdict kept by `cache_seconds`); null when not asked.
    pub external_auth: Option<&'a str>,
    pub tracking_id: Option<&'a str>,
    /// Why the request was refused before ccedge's rules saw it (Pingora's protocol checks):
    /// `malformed_request`, `method_not_allowed`, `header_too_large`.
    pub refusal: Option<&'a str>,
    pub error: Option<String>,
}

/// Lines waiting for the writer.
#[derive(Default)]
struct Pending {
    text: Vec<u8>,
    dropped: u64,
    stop: bool,
}

#[derive(Default)]
struct Batch {
    pending: Mutex<Pending>,
    large: Condvar,
}

pub struct AccessLog {
    enabled: bool,
    /// The file written, when it is one (reopened by `reopen`).
    path: Option<PathBuf>,
    /// How many times a reopen was asked; the writer reopens when it has seen fewer.
    reopens: Arc<AtomicU64>,
    output: Mutex<Option<Box<dyn Write + Send>>>,
    batch: OnceLock<Option<Arc<Batch>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

thread_local! {
    /// Each worker thread formats its lines here, so a line costs no allocation.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    /// Opens the destination now (so a bad path fails at start), writes nothing until the first
    /// request. The writer thread starts on first use, after any daemonizing fork.
    pub fn open(target: &AccessLogTarget) -> Result<Self, String> {
        let output: Option<Box<dyn Write + Send>> = match target {
            AccessLogTarget::Off => None,
            AccessLogTarget::Stdout => Some(Box::new(std::io::stdout())),
            AccessLogTarget::File(path) => Some(Box::new(open_file(path)?)),
        };
        let path = match target {
            AccessLogTarget::File(path) => Some(path.clone()),
            _ => None,
        };
        Ok(AccessLog {
            enabled: output.is_some(),
            path,
            reopens: Arc::default(),
            output: Mutex::new(output),
            batch: OnceLock::new(),
            worker: Mutex::new(None),
        })
    }

    pub fn write(&self, entry: &Entry) {
        let Some(batch) = self.batch.get_or_init(|| self.start()) else {
            return;
        };
        LINE.with_borrow_mut(|line| {
            line.clear();
            if serde_json::to_writer(&mut *line, entry).is_err() {
                return;
            }
            line.push(b'\n');
            let Ok(mut pending) = batch.pending.lock() else {
                return;
            };
            if pending.text.len() + line.len() > MAX_PENDING_BYTES {
                pending.dropped += 1;
                return;
            }
            let before = pending.text.len();
            pending.text.extend_from_slice(line);
            if before < WRITE_AT_BYTES && pending.text.len() >= WRITE_AT_BYTES {
                batch.large.notify_one();
            }
        });
    }

    fn start(&self) -> Option<Arc<Batch>> {
        let output = self.output.lock().ok()?.take()?;
        let batch = Arc::new(Batch::default());
        let shared = batch.clone();
        let reopen = self.path.clone().map(|path| (path, self.reopens.clone()));
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(output, reopen, &shared))
            .map_err(|e| log::error!("access log writer could not start: {e}"))
            .ok()?;
        *self.worker.lock().ok()? = Some(handle);
        Some(batch)
    }

    /// Writes out everything queued so far and stops the writer (at process exit). Waits at
    /// most a few seconds: a destination that does not take writes must not hold the exit.
    pub fn close(&self) {
        let Some(Some(batch)) = self.batch.get() else {
            return;
        };
        if let Ok(mut pending) = batch.pending.lock() {
            pending.stop = true;
        }
        batch.large.notify_one();
        let Some(handle) = self.worker.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !handle.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }

    /// Opens the file again at its path, after a rotation moved it away: the lines the writer
    /// has written so far are in the old file, every later one goes to the new (the writer
    /// reopens within `FLUSH_EVERY`). `false` when the log is not a file (stdout, off).
    pub fn reopen(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        // The file is there again at once, whether or not a line is written soon.
        if let Err(e) = open_file(path) {
            log::error!("{e}; the access log goes on in the old file");
            return true;
        }
        self.reopens.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether lines are written at all (`access_log: off` writes none).
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

fn open_file(path: &std::path::Path) -> Result<std::fs::File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open access log {}: {e}", path.display()))
}

fn writer(
    mut output: Box<dyn Write + Send>,
    reopen: Option<(PathBuf, Arc<AtomicU64>)>,
    batch: &Batch,
) {
    let mut failing = false;
    let mut spare = Vec::new();
    // The file was opened before any reopen was asked.
    let mut reopened = 0;
    loop {
        let (dropped, stop) = {
            let Ok(pending) = batch.pending.lock() else {
                return;
            };
            let Ok((mut pending, _)) = batch.large.wait_timeout_while(pending, FLUSH_EVERY, |p| {
                p.text.len() < WRITE_AT_BYTES && !p.stop
            }) else {
                return;
            };
            std::mem::swap(&mut pending.text, &mut spare);
            (std::mem::take(&mut pending.dropped), pending.stop)
        };
        let asked = reopen
            .as_ref()
            .map(|(path, asked)| (path, asked.load(Ordering::Relaxed)));
        if let Some((path, asked)) = asked.filter(|(_, asked)| *asked != reopened) {
            reopened = asked;
            match open_file(path) {
                Ok(file) => {
                    output = Box::new(file);
                    log::info!("access log reopened: {}", path.display());
                }
                Err(e) => log::error!("{e}; the access log goes on in the old file"),
            }
        }
        if !spare.is_empty() {
            let result = output.write_all(&spare).and_then(|()| output.flush());
            match (result, failing) {
                (Err(e), false) => {
                    log::error!("access log write failed: {e}; lines are being lost");
                    failing = true;
                }
                (Ok(()), true) => {
                    log::info!("access log writes work again");
                    failing = false;
                }
                _ => {}
            }
            spare.clear();
        }
        if dropped > 0 {
            log::warn!("{dropped} access log lines dropped: the log destination is not keeping up");
        }
        if stop {
            return;
        }
    }
}

/// A moment, logged as RFC 3339 UTC with milliseconds (`2026-11-26T05:54:56.123Z`), formatted
/// without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp(chrono::DateTime<chrono::Utc>);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(chrono::Utc::now())
    }

    fn text(&self) -> [u8; 24] {
        use chrono::{Datelike, Timelike};
        let t = &self.0;
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: u32| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, t.year().clamp(0, 9999) as u32);
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        // A leap second shows as :59.999 rather than :60.
        put(17, 2, t.second());
        put(20, 3, (t.nanosecond() / 1_000_000).min(999));
        out
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.text()).expect("ASCII"))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(std::str::from_utf8(&self.text()).expect("ASCII"))
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
    millis(started.elapsed())
}

/// `from` to `to` in milliseconds, to the microsecond.
pub fn millis_between(from: std::time::Instant, to: std::time::Instant) -> f64 {
    millis(to.saturating_duration_since(from))
}

/// `d` in milliseconds, to the microsecond.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Current time in milliseconds since the Unix epoch (for times other processes read).
pub fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Current time as RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: Timestamp::now(),
            service: "cc",
            route: Some("publisher"),
            client_ip: Some([127, 0, 0, 1].into()),
            user: None,
            method: "GET",
            host: None,
            path: "/a\"b",
            protocol: "HTTP/1.1",
            status: 200,
            bytes_sent: 3,
            duration_ms: 1.5,
            upstream: None,
            upstream_status: None,
            upstream_connect_ms: None,
            upstream_header_ms: None,
            upstream_bytes: 0,
            attempts: 0,
            cache: "BYPASS",
            external_auth: None,
            tracking_id: Some("T"),
            refusal: None,
            error: None,
        }
    }

    #[test]
    fn writes_json_lines_and_flushes_on_close() {
        let path = std::env::temp_dir().join(format!("ccedge-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::open(&AccessLogTarget::File(path.clone())).unwrap();
        for status in [200u16, 421] {
            log.write(&Entry { status, ..entry() });
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
    fn timestamps_read_as_rfc3339_with_milliseconds() {
        use chrono::TimeZone;
        for (secs, nanos) in [
            (0, 0),
            (1_795_000_000, 123_456_789),
            (951_782_400, 999_999_999),
            (-62_135_596_800, 7_000_000),
        ] {
            let t = chrono::Utc.timestamp_opt(secs, nanos).unwrap();
            let expected = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(Timestamp(t).to_string(), expected);
            assert_eq!(
                serde_json::to_string(&Timestamp(t)).unwrap(),
                format!("\"{expected}\"")
            );
        }
    }

    #[test]
    fn lines_reach_the_file_while_the_log_stays_open() {
        let path = std::env::temp_dir().join(format!("ccedge-open-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::open(&AccessLogTarget::File(path.clone())).unwrap();
        log.write(&Entry {
            client_ip: Some("2001:db8::1".parse().unwrap()),
            ..entry()
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let line = loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if !text.is_empty() {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "nothing written");
            std::thread::sleep(Duration::from_millis(10));
        };
        let line: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(line["client_ip"], "2001:db8::1");
        log.close();
        std::fs::remove_file(&path).unwrap();
    }

    /// A destination that takes nothing until released, then keeps what it is given.
    struct Stalled {
        release: std::sync::mpsc::Receiver<()>,
        released: bool,
        kept: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.released {
                let _ = self.release.recv();
                self.released = true;
            }
            self.kept.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_destination_holds_a_bounded_backlog_and_drops_the_rest() {
        let (release, stalled) = std::sync::mpsc::channel();
        let kept = Arc::new(Mutex::new(Vec::new()));
        let output = Stalled {
            release: stalled,
            released: false,
            kept: kept.clone(),
        };
        let log = AccessLog {
            enabled: true,
            path: None,
            reopens: Arc::default(),
            output: Mutex::new(Some(Box::new(output))),
            batch: OnceLock::new(),
            worker: Mutex::new(None),
        };
        let line_len = serde_json::to_vec(&entry()).unwrap().len() + 1;
        let sent = 2 * MAX_PENDING_BYTES / line_len;
        for _ in 0..sent {
            log.write(&entry());
        }
        release.send(()).unwrap();
        log.close();
        let written = kept.lock().unwrap().iter().filter(|&&b| b == b'\n').count();
        // What the writer had taken before it stalled, plus at most MAX_PENDING_BYTES more.
        assert!(written < sent, "{written} of {sent} lines written");
        assert!(
            written >= MAX_PENDING_BYTES / line_len,
            "{written} lines written"
        );
    }

    #[test]
    fn off_writes_nothing() {
        let log = AccessLog::open(&AccessLogTarget::Off).unwrap();
        assert!(log.batch.get_or_init(|| log.start()).is_none());
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
