//! State handed from a process to the next at a reload, so that a reload changes nothing an
//! agent or an attacker can notice: the failures and blocks of the login lockouts, and the kept
//! verdicts on credentials (under the same keyed hashes: `secret`).
//!
//! A process that hands its sockets over writes what it knows to `<pid_file>.state-<pid>.json`
//! at once, then again every second while it drains if anything changed (requests in flight
//! still fail logins). The new process reads those files every 200 ms and merges what is new
//! in each: failures are united, the later end of a block is kept, verdicts it lacks are added
//! (a revocation it knows still voids them). Until the first file written after it started
//! arrived (1 s at most), its authentication waits: a guess must not be judged before the
//! failures that came before it are known. Files of processes gone are removed once read.

use crate::observe::own_files::{read_own, replace};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// How long a new process waits for the state of the process it replaces.
pub const ARRIVAL_MAX: Duration = Duration::from_secs(1);
/// How often the new process looks for state files.
const COLLECT_EVERY: Duration = Duration::from_millis(200);
/// The largest state file read (a full lockout table and verdict store of several sites).
const STATE_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// The process's clock in both forms, fixed once: an `Instant` and the wall-clock milliseconds
/// it stands for, so that a time converted there and back is the same every time.
#[derive(Clone, Copy)]
pub struct Wall {
    instant: Instant,
    epoch_ms: u64,
}

impl Wall {
    pub fn process() -> Wall {
        static WALL: OnceLock<Wall> = OnceLock::new();
        *WALL.get_or_init(|| Wall {
            instant: Instant::now(),
            epoch_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        })
    }

    /// `t` in milliseconds since the Unix epoch.
    pub fn ms(&self, t: Instant) -> u64 {
        if t >= self.instant {
            self.epoch_ms + (t - self.instant).as_millis() as u64
        } else {
            self.epoch_ms
                .saturating_sub((self.instant - t).as_millis() as u64)
        }
    }

    /// The instant `ms` (milliseconds since the Unix epoch) stands for.
    pub fn instant(&self, ms: u64) -> Instant {
        if ms >= self.epoch_ms {
            self.instant + Duration::from_millis(ms - self.epoch_ms)
        } else {
            let before = Duration::from_millis(self.epoch_ms - ms);
            self.instant.checked_sub(before).unwrap_or(self.instant)
        }
    }
}

/// What a process hands over: per site, by name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub pid: u32,
    /// When it was written (milliseconds since the Unix epoch).
    pub written_ms: u64,
    /// The fingerprint of the key its hashes are keyed with: under another key, only what is
    /// keyed by name can be taken.
    pub key: String,
    pub sites: BTreeMap<String, SiteState>,
}

/// One site's lockouts and kept verdicts.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteState {
    pub lockouts: Vec<LockoutRecord>,
    pub verdicts: Vec<KeptVerdict>,
}

/// The failures and block of a client address, or of one user there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockoutRecord {
    /// The client's lockout key (its address, or its IPv6 network).
    pub ip: IpAddr,
    /// None: the address's own record.
    pub user: Option<UserRef>,
    pub failures: Vec<Failure>,
    /// The block, when there is one: when it began and ends (milliseconds since the epoch).
    pub blocked: Option<(u64, u64)>,
}

/// Whose record: a user name, or the keyed hash a credential naming no user counts under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRef {
    Name(String),
    Hash(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub at_ms: u64,
    /// A fingerprint of the credential's keyed hash (none for a malformed one).
    pub credential: Option<u64>,
}

/// A verdict kept on a credential, under its keyed hash (hexadecimal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptVerdict {
    pub digest: String,
    pub verdict: KeptKind,
    pub judged_ms: u64,
    pub expires_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeptKind {
    Valid { user: Option<String> },
    Invalid { why: String },
}

/// A site whose state a reload hands over.
pub trait Carried: Send + Sync {
    fn site(&self) -> &str;
    /// A count that changes whenever the state does (a failure, a block, a lift, a verdict).
    fn changes(&self) -> u64;
    fn export(&self, wall: &Wall, now: Instant) -> SiteState;
    /// Merges `state`, taking only what happened at `since_ms` or later (what an earlier file
    /// of the same process did not hold); `same_key`: its hashes are keyed as this process's.
    fn import(&self, state: SiteState, since_ms: u64, same_key: bool, wall: &Wall, now: Instant);
}

/// Whether the state of the process this one replaces has arrived: authentication waits for
/// it, 1 s at most.
#[derive(Default)]
pub struct Arrival {
    done: AtomicBool,
    notify: Notify,
}

impl Arrival {
    /// Arrived already (a fresh start expects nothing).
    pub fn done() -> Arc<Arrival> {
        let arrival = Arrival::default();
        arrival.done.store(true, Ordering::Release);
        Arc::new(arrival)
    }

    pub async fn wait(&self) {
        if self.done.load(Ordering::Acquire) {
            return;
        }
        let arrived = self.notify.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if self.done.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(ARRIVAL_MAX, arrived).await;
    }

    fn arrive(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn arrived(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

pub fn state_file(pid_file: &str, pid: u32) -> PathBuf {
    PathBuf::from(format!("{pid_file}.state-{pid}.json"))
}

pub struct Handover {
    pid_file: String,
    key: String,
    sites: Mutex<Vec<Arc<dyn Carried>>>,
    arrival: Arc<Arrival>,
    /// When this process started (milliseconds since the epoch): a file written since comes
    /// from the process it replaces, after the hand-over.
    started_ms: u64,
    /// Per process whose files were read: when the last one read was written.
    read: Mutex<HashMap<u32, u64>>,
    /// The sites' change count when this process last wrote its file.
    written: Mutex<Option<u64>>,
}

impl Handover {
    /// `upgrade`: this process takes over from another, whose state it waits for.
    pub fn new(pid_file: &str, key: &str, upgrade: bool) -> Arc<Handover> {
        let wall = Wall::process();
        Arc::new(Handover {
            pid_file: pid_file.to_string(),
            key: key.to_string(),
            sites: Mutex::new(Vec::new()),
            arrival: if upgrade {
                Arc::new(Arrival::default())
            } else {
                Arrival::done()
            },
            started_ms: wall.ms(Instant::now()),
            read: Mutex::new(HashMap::new()),
            written: Mutex::new(None),
        })
    }

    pub fn arrival(&self) -> Arc<Arrival> {
        self.arrival.clone()
    }

    pub fn add(&self, site: Arc<dyn Carried>) {
        self.sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(site);
    }

    fn sites(&self) -> Vec<Arc<dyn Carried>> {
        self.sites.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes this process's state for the next, when it changed since the last time (or
    /// always, the first time).
    pub fn write(&self) {
        let sites = self.sites();
        if sites.is_empty() {
            return;
        }
        let changes: u64 = sites.iter().map(|s| s.changes()).sum();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if *written == Some(changes) {
            return;
        }
        let wall = Wall::process();
        let now = Instant::now();
        let snapshot = Snapshot {
            pid: std::process::id(),
            written_ms: wall.ms(now),
            key: self.key.clone(),
            sites: sites
                .iter()
                .map(|s| (s.site().to_string(), s.export(&wall, now)))
                .collect(),
        };
        let path = state_file(&self.pid_file, snapshot.pid);
        let text = serde_json::to_vec(&snapshot).unwrap_or_default();
        match replace(&path, &text) {
            Ok(()) => *written = Some(changes),
            Err(e) => log::warn!(
                "cannot hand the lockouts and verdicts over to the next process in {}: {e}",
                path.display()
            ),
        }
    }

    /// Reads the state files of other processes and merges what is new in each; removes those
    /// of processes gone once read.
    pub fn collect(&self) {
        let me = std::process::id();
        let wall = Wall::process();
        for (pid, path) in state_files(&self.pid_file) {
            if pid == me {
                continue;
            }
            let gone = !alive(pid);
            if let Some(snapshot) = read_own(&path, STATE_MAX_BYTES)
                .and_then(|text| serde_json::from_slice::<Snapshot>(&text).ok())
                .filter(|s| s.pid == pid)
            {
                self.merge(snapshot, &wall);
            }
            if gone {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn merge(&self, snapshot: Snapshot, wall: &Wall) {
        let since = {
            let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            let last = read.entry(snapshot.pid).or_insert(0);
            if snapshot.written_ms <= *last && *last != 0 {
                return;
            }
            std::mem::replace(last, snapshot.written_ms)
        };
        let same_key = snapshot.key == self.key;
        let sites = self.sites();
        let now = Instant::now();
        let (mut lockouts, mut verdicts) = (0, 0);
        for (name, state) in snapshot.sites {
            if let Some(site) = sites.iter().find(|s| s.site() == name) {
                lockouts += state.lockouts.len();
                verdicts += state.verdicts.len();
                site.import(state, since, same_key, wall, now);
            }
        }
        let first = since == 0;
        if first {
            log::info!(
                "state of process {} taken over: {lockouts} lockout record(s), {verdicts} kept verdict(s){}",
                snapshot.pid,
                if same_key {
                    ""
                } else {
                    " (under another key: verdicts and nameless records left out)"
                }
            );
        }
        if snapshot.written_ms >= self.started_ms && !self.arrival.arrived() {
            self.arrival.arrive();
        }
    }
}

/// Reads the state files of other processes while this one serves, and ends the wait for the
/// previous process's state after `ARRIVAL_MAX` at most.
pub struct Collect(pub Arc<Handover>);

#[async_trait]
impl BackgroundService for Collect {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let began = Instant::now();
        loop {
            self.0.collect();
            if !self.0.arrival.arrived() && began.elapsed() >= ARRIVAL_MAX {
                log::warn!(
                    "no lockouts or verdicts came from the previous process within {} ms: \
                     its blocks no longer hold here, and credentials it knew are checked again",
                    ARRIVAL_MAX.as_millis()
                );
                self.0.arrival.arrive();
            }
            tokio::select! {
                _ = tokio::time::sleep(COLLECT_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The state files beside `pid_file`, with their process ids.
fn state_files(pid_file: &str) -> Vec<(u32, PathBuf)> {
    let path = Path::new(pid_file);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.state-", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry
                .file_name()
                .to_string_lossy()
                .strip_prefix(&prefix)?
                .strip_suffix(".json")?
                .parse::<u32>()
                .ok()?;
            Some((pid, entry.path()))
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .is_ok_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_there_and_back_alike() {
        let wall = Wall::process();
        let now = Instant::now();
        for t in [
            now,
            now - Duration::from_millis(1500),
            now + Duration::from_secs(90),
        ] {
            let ms = wall.ms(t);
            assert_eq!(wall.ms(wall.instant(ms)), ms);
            let back = wall.instant(ms);
            let off = if back > t { back - t } else { t - back };
            assert!(off < Duration::from_millis(1), "{off:?}");
        }
    }

    #[tokio::test]
    async fn an_upgrade_waits_for_the_state_a_fresh_start_does_not() {
        let fresh = Arrival::done();
        tokio::time::timeout(Duration::from_millis(10), fresh.wait())
            .await
            .expect("no wait");
        let upgrade = Arc::new(Arrival::default());
        let waiting = tokio::spawn({
            let upgrade = upgrade.clone();
            async move { upgrade.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        upgrade.arrive();
        tokio::time::timeout(Duration::from_millis(100), waiting)
            .await
            .expect("woken when it arrives")
            .unwrap();
        // Never more than ARRIVAL_MAX, should nothing arrive.
        let never = Arrival::default();
        let began = Instant::now();
        never.wait().await;
        assert!(began.elapsed() >= ARRIVAL_MAX && began.elapsed() < ARRIVAL_MAX * 2);
    }
}
