//! State handed from a process to the next at a reload, so that a reload changes nothing an
//! agent or an attacker can notice: the failures, blocks and lifts of the login lockouts, and
//! the kept verdicts on credentials (under the same keyed hashes: `secret`).
//!
//! A process that hands its sockets over judges no new credential from then on (a request that
//! needs one gets 503 and comes back to the new process) and writes what it knows to
//! `<pid_file>.state-<pid>.json` at once, the credentials it is still judging included (the new
//! process holds their places), then again every second it changes while it drains. The new
//! process reads those files every 200 ms and merges each whole, idempotently: failures are
//! united (each once), the later end of a block is kept, lifts apply whichever file brings them,
//! verdicts it lacks are added (a revocation it knows still voids them). Until the file of the
//! process that handed over to it arrived (1 s at most), its authentication waits: a guess must
//! not be judged before the failures that came before it are known. Files of processes gone are
//! removed once read. Times are milliseconds of the machine's monotonic clock, which every
//! process reads alike and no clock step moves.

use crate::observe::draining::{self, alive};
use crate::observe::own_files::{per_process, read_own, replace};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a new process waits for the state of the process it replaces.
pub const ARRIVAL_MAX: Duration = Duration::from_secs(1);
/// How often the new process looks for state files.
const COLLECT_EVERY: Duration = Duration::from_millis(200);
/// The largest state file read (a full lockout table and verdict store of a few sites).
const STATE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The process's clock in both forms, fixed once: an `Instant` and the milliseconds of the
/// machine's monotonic clock it stands for (the clock `Instant` reads), so that every process
/// converts alike and a time converted there and back is the same every time.
#[derive(Clone, Copy)]
pub struct Clock {
    instant: Instant,
    machine_ms: u64,
}

impl Clock {
    pub fn process() -> Clock {
        static CLOCK: OnceLock<Clock> = OnceLock::new();
        *CLOCK.get_or_init(|| {
            let instant = Instant::now();
            let machine = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                .map(Duration::from)
                .unwrap_or_default();
            Clock {
                instant,
                machine_ms: machine.as_millis() as u64,
            }
        })
    }

    /// `t` in milliseconds of the machine's monotonic clock.
    pub fn ms(&self, t: Instant) -> u64 {
        if t >= self.instant {
            self.machine_ms + (t - self.instant).as_millis() as u64
        } else {
            self.machine_ms
                .saturating_sub((self.instant - t).as_millis() as u64)
        }
    }

    /// The instant `ms` stands for (never later than `latest`: an imported time is clamped).
    pub fn instant(&self, ms: u64, latest: Instant) -> Instant {
        let t = if ms >= self.machine_ms {
            self.instant
                .checked_add(Duration::from_millis(ms - self.machine_ms))
                .unwrap_or(latest)
        } else {
            let before = Duration::from_millis(self.machine_ms - ms);
            self.instant.checked_sub(before).unwrap_or(self.instant)
        };
        t.min(latest)
    }
}

/// What a process hands over: per site, by name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub pid: u32,
    /// When it was written.
    pub written_ms: u64,
    /// When the process handed its sockets over: the process that took them began before.
    pub handed_over_ms: u64,
    /// The fingerprint of the key its hashes are keyed with: under another key, only what is
    /// keyed by name can be taken.
    pub key: String,
    pub sites: BTreeMap<String, SiteState>,
}

/// One site's lockouts, lifts and kept verdicts.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteState {
    pub lockouts: Vec<LockoutRecord>,
    pub lifts: Vec<Lift>,
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
    /// Credentials being judged when the file was written: each holds a place.
    #[serde(default)]
    pub judging: u32,
    /// The block, when there is one: when it began and when it ends.
    pub blocked: Option<(u64, u64)>,
}

/// A block lifted (and failures forgotten) by the admin listener: what happened before it at
/// that address (or to that user there) no longer counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lift {
    pub ip: IpAddr,
    /// None: every record at the address.
    pub user: Option<UserRef>,
    pub at_ms: u64,
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
    /// A count that changes whenever the state does (a failure, a block, a lift, a verdict, a
    /// revocation).
    fn changes(&self) -> u64;
    fn export(&self, clock: &Clock, now: Instant) -> SiteState;
    /// Merges `state`, all of the latest file of process `from` (merging a file again changes
    /// nothing); `same_key`: its hashes are keyed as this process's.
    fn import(&self, state: SiteState, from: u32, same_key: bool, clock: &Clock, now: Instant);
    /// `user` was revoked at `at` (before this process started).
    fn revoked_before(&self, user: &str, at: Instant);
    /// From now on, judge no new credential (the process handed its sockets over).
    fn stop_judging(&self);
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

/// A state file as last seen: read again only when one of these changed.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

pub struct Handover {
    pid_file: String,
    key: String,
    sites: Mutex<Vec<Arc<dyn Carried>>>,
    arrival: Arc<Arrival>,
    /// When this process started: the process that hands over to it does so later.
    started_ms: u64,
    /// When this process handed its sockets over, once it did.
    handed_over_ms: Mutex<Option<u64>>,
    /// The state files read, as they were.
    seen: Mutex<HashMap<u32, Seen>>,
    /// The sites' change count when this process last wrote its file.
    written: Mutex<Option<u64>>,
}

impl Handover {
    /// `upgrade`: this process takes over from another, whose state it waits for.
    pub fn new(pid_file: &str, key: &str, upgrade: bool) -> Arc<Handover> {
        let clock = Clock::process();
        Arc::new(Handover {
            pid_file: pid_file.to_string(),
            key: key.to_string(),
            sites: Mutex::new(Vec::new()),
            arrival: if upgrade {
                Arc::new(Arrival::default())
            } else {
                Arrival::done()
            },
            started_ms: clock.ms(Instant::now()),
            handed_over_ms: Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
            written: Mutex::new(None),
        })
    }

    pub fn arrival(&self) -> Arc<Arrival> {
        self.arrival.clone()
    }

    /// Adds a site with state to hand over, and tells it the revocations of the last `keep`
    /// (recorded beside the pid file by the processes before), so that no verdict handed over
    /// outlives its user's revocation.
    pub fn add(&self, site: Arc<dyn Carried>, keep: Duration) {
        let now_ms = crate::observe::access_log::epoch_ms();
        let since = now_ms.saturating_sub(keep.as_millis());
        let now = Instant::now();
        for (at, user) in draining::revocations_since(&self.pid_file, since) {
            let ago = Duration::from_millis(u64::try_from(now_ms.saturating_sub(at)).unwrap_or(0));
            site.revoked_before(&user, now.checked_sub(ago).unwrap_or(now));
        }
        self.sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(site);
    }

    fn sites(&self) -> Vec<Arc<dyn Carried>> {
        self.sites.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What reads the files of other processes while this one serves; none when no site has
    /// state to hand over (nothing is then waited for).
    pub fn collector(self: &Arc<Self>) -> Option<Collect> {
        if self.sites().is_empty() {
            self.arrival.arrive();
            return None;
        }
        Some(Collect(self.clone()))
    }

    /// The sockets went to the next process: judge no new credential, and write the state.
    pub fn hand_over(&self) {
        for site in self.sites() {
            site.stop_judging();
        }
        *self
            .handed_over_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Clock::process().ms(Instant::now()));
        self.write();
    }

    /// Writes this process's state for the next, when it changed since the last time (or
    /// always, the first time).
    pub fn write(&self) {
        let sites = self.sites();
        let Some(handed_over_ms) = *self
            .handed_over_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        else {
            return;
        };
        if sites.is_empty() {
            return;
        }
        let changes: u64 = sites.iter().map(|s| s.changes()).sum();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if *written == Some(changes) {
            return;
        }
        let clock = Clock::process();
        let now = Instant::now();
        let snapshot = Snapshot {
            pid: std::process::id(),
            written_ms: clock.ms(now),
            handed_over_ms,
            key: self.key.clone(),
            sites: sites
                .iter()
                .map(|s| (s.site().to_string(), s.export(&clock, now)))
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

    /// Reads the state files of other processes that changed since last time and merges
    /// each; removes those of processes gone once read.
    pub fn collect(&self) {
        let me = std::process::id();
        let clock = Clock::process();
        for (pid, path) in per_process(&self.pid_file, ".state-") {
            if pid == me {
                continue;
            }
            let gone = !alive(pid);
            let seen = std::fs::symlink_metadata(&path).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                Seen {
                    inode: m.ino(),
                    len: m.len(),
                    modified: m.modified().ok(),
                }
            });
            let changed = {
                let mut known = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                match seen {
                    Some(seen) if known.get(&pid) != Some(&seen) => {
                        known.insert(pid, seen);
                        true
                    }
                    _ => false,
                }
            };
            if changed {
                if let Some(snapshot) = read_own(&path, STATE_MAX_BYTES)
                    .and_then(|text| serde_json::from_slice::<Snapshot>(&text).ok())
                    .filter(|s| s.pid == pid)
                {
                    self.merge(snapshot, &clock);
                }
            }
            if gone {
                let _ = std::fs::remove_file(&path);
                self.seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&pid);
            }
        }
    }

    fn merge(&self, snapshot: Snapshot, clock: &Clock) {
        let same_key = snapshot.key == self.key;
        let sites = self.sites();
        let now = Instant::now();
        let (mut lockouts, mut verdicts) = (0, 0);
        for (name, state) in snapshot.sites {
            if let Some(site) = sites.iter().find(|s| s.site() == name) {
                lockouts += state.lockouts.len();
                verdicts += state.verdicts.len();
                site.import(state, snapshot.pid, same_key, clock, now);
            }
        }
        let predecessor = snapshot.handed_over_ms >= self.started_ms;
        if predecessor && !self.arrival.arrived() {
            log::info!(
                "state of process {} taken over: {lockouts} lockout record(s), {verdicts} kept verdict(s){}",
                snapshot.pid,
                if same_key {
                    ""
                } else {
                    " (under another key: verdicts and records of credentials naming no user left out)"
                }
            );
            self.arrival.arrive();
        }
    }
}

/// Reads the state files of other processes while this one serves, and ends the wait for the
/// previous process's state after `ARRIVAL_MAX` at most.
pub struct Collect(Arc<Handover>);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_there_and_back_alike() {
        let wall = Clock::process();
        let now = Instant::now();
        let latest = now + Duration::from_secs(3600);
        for t in [
            now,
            now - Duration::from_millis(1500),
            now + Duration::from_secs(90),
        ] {
            let ms = wall.ms(t);
            assert_eq!(wall.ms(wall.instant(ms, latest)), ms);
            let back = wall.instant(ms, latest);
            let off = if back > t { back - t } else { t - back };
            assert!(off < Duration::from_millis(1), "{off:?}");
        }
        // The machine's clock, as another process reads it.
        let machine = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
        let machine = Duration::from(machine).as_millis() as u64;
        assert!(wall.ms(Instant::now()).abs_diff(machine) <= 1);
        // Imported times are clamped.
        assert_eq!(wall.instant(u64::MAX, now), now);
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
