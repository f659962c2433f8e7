//! The state every instance shares, in Redis (`server.shared_state`): login failures, blocks and
//! the leases of credentials being judged (Lua scripts, atomic in Redis and timed by its clock),
//! kept verdicts under their keyed hashes (signed with the shared key), rate counts
//! (`state::rates`), and the admin actions every instance applies: lifts, revocations, purges,
//! announced on a channel per site and kept in a log an instance that missed them reads again.
//!
//! Each instance keeps its local state as a mirror, and the common request path (a known
//! verdict, no block) never asks Redis. A credential to be judged reserves its place in Redis
//! too (which also answers with the block, or a verdict another instance kept); a failure is
//! counted there and a block begun there is announced. No call waits longer than `timeout_ms`:
//! one that does, or fails, marks Redis down, and until two checks in a row (every 500 ms) find
//! it answering within `timeout_ms`, every call is skipped and the instance works on its local
//! state alone (said in the log, at most once a minute, and in `ccedge_shared_state_up`).
//! Admin actions made meanwhile are kept and made once Redis is back; then the instances give
//! Redis the blocks they began alone (unless lifted since), and read the blocks and admin
//! actions they missed.

use crate::config::SharedState;
use crate::observe::metrics;
use crate::state::rates::{self, RateShare};
use async_trait::async_trait;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface};
use fred::prelude::{Builder, Config, ReconnectPolicy, TlsConnector};
use fred::types::scripts::Script;
use fred::types::Value;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often Redis is checked while it is down, and the rate counts added up.
const TICK: Duration = Duration::from_millis(500);
/// How often the rate counts are added up.
const RATES_EVERY: Duration = Duration::from_millis(200);
/// How long a second's rate count is kept in Redis.
const RATE_KEPT_MS: i64 = 3000;
/// How often, while connected, the blocks and admin actions are read again (announcements
/// missed, should the subscription have dropped, are caught up).
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// How much further back than the last read admin actions are read again (with room for a
/// read that took long, or a reload's hand-over).
const RESYNC_OVERLAP_MS: u64 = 30_000;
/// The longest a call made for the admin listener (a lift, a revocation) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Checks in a row Redis must pass before it counts as up again.
const UP_AFTER: u32 = 2;
/// Lines about Redis going down or coming back, at most, each minute (it may flap).
const SAY_PER_MINUTE: u32 = 4;
/// Announcements buffered for the site listeners (fred's default, 32, is too few for a
/// flood of blocks).
const ANNOUNCEMENTS_BUFFERED: usize = 4096;
/// Admin actions whose announcement was seen, remembered so that reading the log again does
/// not apply them twice.
const ACTIONS_REMEMBERED: usize = 4096;

/// What a site does with what other instances announce.
pub trait Listener: Send + Sync {
    /// Another instance blocked the address `ip`, or with `user` (its hash and name) the user
    /// there, for `left`.
    fn blocked(&self, ip: IpAddr, user: Option<(u64, Option<&str>)>, left: Duration);
    /// The admin listener of an instance lifted the block of `user` at `ip`, or every block
    /// there.
    fn lifted(&self, ip: IpAddr, user: Option<&str>);
    /// The admin listener of an instance revoked `user`, `ago`.
    fn revoked(&self, user: &str, ago: Duration);
    /// The admin listener of an instance purged the caches (entries under `prefix`).
    fn purged(&self, prefix: Option<&str>);
    /// The blocks this instance holds, to give Redis back after it was down.
    fn blocks(&self) -> Vec<HeldBlock>;
}

/// A block an instance holds: the address, the user there (hash and name), the time left, and
/// how long blocks last (when it began, with the time left).
pub struct HeldBlock {
    pub ip: IpAddr,
    pub user: Option<(u64, Option<String>)>,
    pub left: Duration,
    pub length: Duration,
}

/// An announcement on a site's channel (also how admin actions are kept in their log).
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    /// When it happened, by Redis's clock (ms).
    #[serde(default)]
    at: Option<u64>,
    /// Tells one admin action from another.
    #[serde(default)]
    tag: Option<String>,
    #[serde(flatten)]
    event: Event,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Event {
    Block {
        ip: String,
        /// The user's hash (decimal), for a user's block.
        user: Option<String>,
        name: Option<String>,
        left_ms: u64,
    },
    Lift {
        ip: String,
        user: Option<String>,
    },
    Revoke {
        user: String,
    },
    Purge {
        prefix: Option<String>,
    },
}

/// A verdict as kept in Redis: when the judging instance judged it and until when it may be
/// kept (Unix ms, its clock), `mac` a keyed hash of all of it with the site and the credential's
/// digest, under the shared key (whoever may write to Redis cannot make a credential valid,
/// nor make a verdict younger, longer-lived or another site's); `judged` by Redis's clock (ms),
/// for Redis's own revocation check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedVerdict {
    pub valid: bool,
    pub user: Option<String>,
    pub why: Option<String>,
    pub judged_at: u64,
    pub expires_at: u64,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged: Option<u64>,
}

/// What Redis says of a credential to be judged.
#[derive(Debug, PartialEq)]
pub enum Remote {
    /// Its place is reserved on every instance: judge it, then settle its lease.
    Reserved,
    /// Another instance judged it: this verdict, kept this much longer, judged this long ago.
    Verdict(SharedVerdict, Duration, Duration),
    /// The address (`user`: false) or the user there is blocked this much longer.
    Blocked { user: bool, left: Duration },
    /// The address or the user has as many credentials being judged as failures left.
    Full,
    /// Redis did not answer (or is down): decide on local state.
    Unanswered,
}

#[derive(Clone)]
struct Scripts {
    reserve: Script,
    settle: Script,
    blocks: Script,
    give: Script,
    lift: Script,
    verdict: Script,
    revoke: Script,
    purge: Script,
    actions: Script,
}

/// One site's keys and channel in Redis.
#[derive(Clone)]
struct SiteKeys {
    /// `ccedge:{<key fingerprint>:<site>}:`: every key of the site (one hash slot), apart from
    /// other deployments' (another key) and other sites'.
    prefix: String,
    channel: String,
    blocks: String,
    actions: String,
}

impl SiteKeys {
    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }
}

/// An admin action Redis did not take (it was down), made once it is back.
#[derive(Clone)]
enum Pending {
    Lift {
        ip: IpAddr,
        user: Option<(String, u64)>,
        block: Duration,
    },
    Revoke {
        user: String,
        keep: Duration,
    },
    Purge {
        prefix: Option<String>,
    },
}

/// Each site's keys and listener, by channel.
type Sites = HashMap<String, (SiteKeys, Arc<dyn Listener>)>;

pub struct Shared {
    client: Client,
    subscriber: SubscriberClient,
    timeout: Duration,
    up: AtomicBool,
    /// Checks passed in a row while down.
    passed: AtomicU32,
    /// Tells this instance's announcements from others'.
    instance: String,
    shown_url: String,
    /// The shared key's fingerprint, in every key.
    fingerprint: String,
    scripts: Scripts,
    listeners: Mutex<Sites>,
    /// Makes each lease, failure and admin action unique.
    tags: AtomicU64,
    /// The rate counts of each service.
    rates: Mutex<Vec<Arc<RateShare>>>,
    /// Admin actions waiting for Redis, by site.
    pending: Mutex<Vec<(SiteKeys, Pending)>>,
    /// Admin actions applied (their tags), oldest first.
    applied: Mutex<(VecDeque<String>, HashSet<String>)>,
    /// By channel: when its admin actions were last read.
    actions_read: Mutex<HashMap<String, Instant>>,
    /// When this process started: admin actions since are read at the first resync.
    started: Instant,
    /// Lines about Redis going down or coming back: since when they are counted, how many.
    said: Mutex<(Instant, u32)>,
}

impl Shared {
    /// The clients (not connected yet: `SharedService` connects them); `fingerprint`: of the
    /// shared key.
    pub fn new(settings: &SharedState, fingerprint: &str) -> Result<Arc<Shared>, String> {
        let mut config = Config::from_url(&settings.redis_url.0)
            .map_err(|e| format!("server.shared_state.redis_url: {}", e.details()))?;
        if let Some(password) = &settings.password {
            config.password = Some(password.0.clone());
        }
        if let Some(tls) = &settings.tls {
            config.tls = Some(tls_connector(tls)?.into());
        }
        // A command sent while disconnected fails at once instead of waiting for the
        // connection (the instance decides locally meanwhile).
        config.fail_fast = true;
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = ADMIN_TIMEOUT;
                p.broadcast_channel_capacity = ANNOUNCEMENTS_BUFFERED;
            })
            .set_policy(ReconnectPolicy::new_constant(0, 500));
        let client = builder.build().map_err(|e| e.details().to_string())?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| e.details().to_string())?;
        let script = |lua: &str| Script::from_lua(lua.to_string());
        Ok(Arc::new(Shared {
            client,
            subscriber,
            timeout: settings.timeout,
            up: AtomicBool::new(false),
            passed: AtomicU32::new(0),
            instance: format!("{:016x}", rand::random::<u64>()),
            shown_url: settings.shown_url.clone(),
            fingerprint: fingerprint.to_string(),
            scripts: Scripts {
                reserve: script(include_str!("scripts/reserve.lua")),
                settle: script(include_str!("scripts/settle.lua")),
                blocks: script(include_str!("scripts/blocks.lua")),
                give: script(include_str!("scripts/give.lua")),
                lift: script(include_str!("scripts/lift.lua")),
                verdict: script(include_str!("scripts/verdict.lua")),
                revoke: script(include_str!("scripts/revoke.lua")),
                purge: script(include_str!("scripts/purge.lua")),
                actions: script(include_str!("scripts/actions.lua")),
            },
            listeners: Mutex::new(HashMap::new()),
            tags: AtomicU64::new(0),
            rates: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            applied: Mutex::new((VecDeque::new(), HashSet::new())),
            actions_read: Mutex::new(HashMap::new()),
            started: Instant::now(),
            said: Mutex::new((Instant::now(), 0)),
        }))
    }

    /// The share of site `name`.
    pub fn site(self: &Arc<Self>, name: &str) -> Arc<SiteShare> {
        let prefix = format!("ccedge:{{{}:{name}}}:", self.fingerprint);
        Arc::new(SiteShare {
            shared: self.clone(),
            keys: SiteKeys {
                channel: format!("{prefix}events"),
                blocks: format!("{prefix}blocks"),
                actions: format!("{prefix}actions"),
                prefix,
            },
        })
    }

    /// Hands what other instances announce for `site` to `listener` (before the service
    /// starts).
    pub fn listen(&self, site: &SiteShare, listener: Arc<dyn Listener>) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site.keys.channel.clone(), (site.keys.clone(), listener));
    }

    /// The rate counts service `name` shares (user names hashed with `names`).
    pub fn rates(&self, name: &str, names: siphasher::sip::SipHasher13) -> Arc<RateShare> {
        let share = Arc::new(RateShare::new(
            &format!("{}:{name}", self.fingerprint),
            names,
        ));
        self.rates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(share.clone());
        share
    }

    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn tag(&self) -> String {
        format!(
            "{}-{}",
            self.instance,
            self.tags.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// `call` bounded by `timeout`, skipped while Redis is down; a timeout or an error marks it
    /// down.
    async fn call<T, F>(&self, name: &str, timeout: Duration, call: F) -> Option<T>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        if !self.up() {
            metrics::shared_state_call(name, "skipped").inc();
            return None;
        }
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => {
                metrics::shared_state_call(name, "ok").inc();
                Some(value)
            }
            Ok(Err(e)) => {
                metrics::shared_state_call(name, "error").inc();
                self.down(&format!("{name}: {}", e.details()));
                None
            }
            Err(_) => {
                metrics::shared_state_call(name, "timeout").inc();
                self.down(&format!(
                    "{name} took longer than {} ms",
                    timeout.as_millis()
                ));
                None
            }
        }
    }

    /// Whether a line about Redis's state may be written now (a few a minute at most).
    fn may_say(&self) -> bool {
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        if said.0.elapsed() >= Duration::from_secs(60) {
            *said = (Instant::now(), 0);
        }
        said.1 += 1;
        said.1 <= SAY_PER_MINUTE
    }

    fn down(&self, why: &str) {
        self.passed.store(0, Ordering::Relaxed);
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::shared_state_up(false);
            let line = format!(
                "shared state: Redis at {} is down or slow ({why}): lockouts, verdicts, rate \
                 counters and admin actions are local to this instance until it answers again",
                self.shown_url
            );
            if self.may_say() {
                log::warn!("{line}");
            } else {
                log::debug!("{line}");
            }
        }
    }

    /// Asks Redis whether it answers within `timeout_ms`; after two answers in a row, it is up
    /// again: the admin actions made meanwhile are made, and the instances exchange their
    /// blocks and read the admin actions they missed.
    async fn check(&self, first: bool) {
        let answered = tokio::time::timeout(self.timeout, self.client.ping::<String>(None)).await;
        let why = match answered {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.details().to_string()),
            Err(_) => Some(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        if let Some(why) = why {
            if self.up() {
                self.down(&why);
            } else if first && self.may_say() {
                log::warn!(
                    "shared state: Redis at {} does not answer ({why}): lockouts, verdicts, \
                     rate counters and admin actions are local to this instance until it does",
                    self.shown_url
                );
            }
            self.passed.store(0, Ordering::Relaxed);
            return;
        }
        if self.up() || self.passed.fetch_add(1, Ordering::Relaxed) + 1 < UP_AFTER {
            return;
        }
        self.up.store(true, Ordering::Release);
        metrics::shared_state_up(true);
        let line = format!(
            "shared state: Redis at {} answers: lockouts, verdicts, rate counters and admin \
             actions are shared",
            self.shown_url
        );
        if self.may_say() {
            log::info!("{line}");
        } else {
            log::debug!("{line}");
        }
        self.make_pending().await;
        self.resync(true).await;
    }

    /// Makes the admin actions Redis missed while it was down.
    async fn make_pending(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for (keys, action) in pending {
            let done = match &action {
                Pending::Lift { ip, user, block } => {
                    let user = user.as_ref().map(|(name, hash)| (name.as_str(), *hash));
                    self.lift(&keys, *ip, user, *block).await.is_some()
                }
                Pending::Revoke { user, keep } => self.revoke(&keys, user, *keep).await,
                Pending::Purge { prefix } => self.purge(&keys, prefix.as_deref()).await,
            };
            if !done {
                self.wait_for(keys, action);
            }
        }
    }

    fn wait_for(&self, keys: SiteKeys, action: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((keys, action));
    }

    fn sites(&self) -> Vec<(SiteKeys, Arc<dyn Listener>)> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Reads again the blocks and admin actions of every site (giving Redis the blocks begun
    /// here alone first, when `give`: Redis was down).
    async fn resync(&self, give: bool) {
        for (keys, listener) in self.sites() {
            if give {
                self.give_blocks(&keys, listener.as_ref()).await;
            }
            self.take_blocks(&keys, listener.as_ref()).await;
            self.take_actions(&keys, listener.as_ref()).await;
        }
    }

    /// Applies an announcement to its site, unless this instance made it or it was applied.
    fn dispatch(&self, channel: &str, text: &str) {
        let Some((_, listener)) = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(channel)
            .cloned()
        else {
            return;
        };
        let Ok(envelope) = serde_json::from_str::<Envelope>(text) else {
            log::debug!("shared state: an announcement on {channel} that is not ccedge's");
            return;
        };
        self.apply(listener.as_ref(), envelope, None);
    }

    /// Applies `envelope`; `now`: Redis's time, when known (for how long ago it happened).
    fn apply(&self, listener: &dyn Listener, envelope: Envelope, now: Option<u64>) {
        if envelope.from == self.instance {
            return;
        }
        if let Some(tag) = &envelope.tag {
            let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            if !applied.1.insert(tag.clone()) {
                return;
            }
            applied.0.push_back(tag.clone());
            if applied.0.len() > ACTIONS_REMEMBERED {
                if let Some(old) = applied.0.pop_front() {
                    applied.1.remove(&old);
                }
            }
        }
        let ago = match (now, envelope.at) {
            (Some(now), Some(at)) => Duration::from_millis(now.saturating_sub(at)),
            _ => Duration::ZERO,
        };
        match envelope.event {
            Event::Block {
                ip,
                user,
                name,
                left_ms,
            } => {
                let Ok(ip) = ip.parse() else { return };
                let user = match user {
                    Some(hash) => match hash.parse::<u64>() {
                        Ok(hash) => Some((hash, name.as_deref().filter(|n| !n.is_empty()))),
                        Err(_) => return,
                    },
                    None => None,
                };
                listener.blocked(ip, user, Duration::from_millis(left_ms));
            }
            Event::Lift { ip, user } => {
                if let Ok(ip) = ip.parse() {
                    listener.lifted(ip, user.as_deref());
                }
            }
            Event::Revoke { user } => listener.revoked(&user, ago),
            Event::Purge { prefix } => listener.purged(prefix.as_deref()),
        }
    }

    /// Gives Redis the blocks `listener` holds that it lacks (begun while Redis was down), but
    /// those an admin lifted since; the other instances are told.
    async fn give_blocks(&self, site: &SiteKeys, listener: &dyn Listener) {
        for HeldBlock {
            ip,
            user,
            left,
            length,
        } in listener.blocks()
        {
            let hash = user.as_ref().map(|(hash, _)| *hash);
            let id = record_id(ip, hash);
            let name = user.and_then(|(_, name)| name).unwrap_or_default();
            let keys = vec![
                site.key("b", &id),
                site.key("L", &id),
                site.key("L", &ip.to_string()),
                site.blocks.clone(),
            ];
            let args = vec![
                left.as_millis().max(1).to_string(),
                length.max(left).as_millis().to_string(),
                name,
                site.channel.clone(),
                self.instance.clone(),
                ip.to_string(),
                hash.map_or_else(String::new, |h| h.to_string()),
                id,
            ];
            let give = self
                .scripts
                .give
                .evalsha_with_reload::<i64, _, _>(&self.client, keys, args);
            if self
                .call("give blocks", ADMIN_TIMEOUT, give)
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// Takes the blocks Redis holds (announcements missed).
    async fn take_blocks(&self, site: &SiteKeys, listener: &dyn Listener) {
        let blocks: Option<Vec<Value>> = self
            .call(
                "take blocks",
                ADMIN_TIMEOUT,
                self.scripts.blocks.evalsha_with_reload(
                    &self.client,
                    site.blocks.clone(),
                    site.prefix.clone(),
                ),
            )
            .await;
        for block in blocks.unwrap_or_default().chunks(3) {
            let [id, left, name] = block else { continue };
            let (Some(id), Some(left)) = (id.as_string(), left.as_i64()) else {
                continue;
            };
            let name = name.as_string().filter(|n| !n.is_empty());
            let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
            let (ip, user) = match id.split_once('/') {
                Some((ip, hash)) => match u64::from_str_radix(hash, 16) {
                    Ok(hash) => (ip, Some(hash)),
                    Err(_) => continue,
                },
                None => (id.as_str(), None),
            };
            if let Ok(ip) = ip.parse() {
                listener.blocked(ip, user.map(|h| (h, name.as_deref())), left);
            }
        }
    }

    /// Applies the admin actions of the site's log this instance has not (announcements
    /// missed): those since it last read the log, or since it started (a revocation made while
    /// it could not reach Redis, or during a reload's hand-over, must not be missed).
    async fn take_actions(&self, site: &SiteKeys, listener: &dyn Listener) {
        let since = self
            .actions_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&site.channel)
            .copied()
            .unwrap_or(self.started);
        let back = since.elapsed() + Duration::from_millis(RESYNC_OVERLAP_MS);
        let began = Instant::now();
        let read: Option<Vec<Value>> = self
            .call(
                "take actions",
                ADMIN_TIMEOUT,
                self.scripts.actions.evalsha_with_reload(
                    &self.client,
                    site.actions.clone(),
                    back.as_millis().to_string(),
                ),
            )
            .await;
        let Some(read) = read else { return };
        let Some(now) = read.first().and_then(Value::as_u64) else {
            return;
        };
        for text in read.iter().skip(1).filter_map(Value::as_string) {
            if let Ok(envelope) = serde_json::from_str::<Envelope>(&text) {
                self.apply(listener, envelope, Some(now));
            }
        }
        self.actions_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(site.channel.clone(), began);
    }

    async fn lift(
        &self,
        site: &SiteKeys,
        ip: IpAddr,
        user: Option<(&str, u64)>,
        block: Duration,
    ) -> Option<i64> {
        let args = vec![
            site.prefix.clone(),
            ip.to_string(),
            user.map_or_else(String::new, |(_, hash)| record_id(ip, Some(hash))),
            site.channel.clone(),
            self.instance.clone(),
            user.map_or("", |(name, _)| name).to_string(),
            block.as_millis().max(1).to_string(),
            self.tag(),
        ];
        let keys = vec![site.blocks.clone(), site.actions.clone()];
        self.call(
            "lift",
            ADMIN_TIMEOUT,
            self.scripts
                .lift
                .evalsha_with_reload(&self.client, keys, args),
        )
        .await
    }

    async fn revoke(&self, site: &SiteKeys, user: &str, keep: Duration) -> bool {
        let keys = vec![
            site.key("r", &user.to_ascii_lowercase()),
            site.actions.clone(),
        ];
        let args = vec![
            keep.as_millis().max(1).to_string(),
            site.channel.clone(),
            self.instance.clone(),
            user.to_string(),
            self.tag(),
        ];
        let revoke = self
            .scripts
            .revoke
            .evalsha_with_reload::<i64, _, _>(&self.client, keys, args);
        self.call("revoke", ADMIN_TIMEOUT, revoke).await.is_some()
    }

    async fn purge(&self, site: &SiteKeys, prefix: Option<&str>) -> bool {
        let args = vec![
            site.channel.clone(),
            self.instance.clone(),
            prefix.unwrap_or("").to_string(),
            self.tag(),
        ];
        let purge = self.scripts.purge.evalsha_with_reload::<i64, _, _>(
            &self.client,
            site.actions.clone(),
            args,
        );
        self.call("purge", ADMIN_TIMEOUT, purge).await.is_some()
    }

    /// Adds this instance's rate counts to Redis's, and hears the totals.
    async fn add_rates(&self) {
        let shares = self.rates.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = rates::second();
        for share in shares {
            if !self.up() {
                // Counted locally meanwhile; nothing is marked sent.
                return;
            }
            let due = share.due(now);
            if due.is_empty() {
                continue;
            }
            let pipeline = self.client.pipeline();
            for d in &due {
                let _: Result<(), _> = pipeline.incr_by(d.key.as_str(), d.delta).await;
                let _: Result<(), _> = pipeline.pexpire(d.key.as_str(), RATE_KEPT_MS, None).await;
            }
            // Off the request path: the longer timeout, so that one slow round does not mark
            // Redis down for the requests.
            let totals: Option<Vec<Value>> =
                self.call("rates", ADMIN_TIMEOUT, pipeline.all()).await;
            for (d, total) in due.iter().zip(totals.unwrap_or_default().iter().step_by(2)) {
                if let Some(total) = total.as_i64() {
                    share.heard(d, total);
                }
            }
        }
    }
}

/// TLS towards Redis, from the PEM files of `server.shared_state`.
fn tls_connector(tls: &crate::config::RedisTls) -> Result<TlsConnector, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut builder = native_tls::TlsConnector::builder();
    builder.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    if let Some(ca) = &tls.ca {
        for cert in openssl::x509::X509::stack_from_pem(&read(ca)?)
            .map_err(|e| format!("{}: {e}", ca.display()))?
        {
            let der = cert.to_der().map_err(|e| e.to_string())?;
            let cert = native_tls::Certificate::from_der(&der).map_err(|e| e.to_string())?;
            builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &tls.client {
        let identity = native_tls::Identity::from_pkcs8(&read(cert)?, &read(key)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        builder.identity(identity);
    }
    let connector = builder.build().map_err(|e| e.to_string())?;
    Ok(TlsConnector::from(connector))
}

/// One site's share of the state.
pub struct SiteShare {
    shared: Arc<Shared>,
    keys: SiteKeys,
}

/// A record's id in Redis: the client address, or the address and the user's hash.
fn record_id(ip: IpAddr, user: Option<u64>) -> String {
    match user {
        Some(hash) => format!("{ip}/{hash:016x}"),
        None => ip.to_string(),
    }
}

/// Lockout settings, as the scripts take them.
#[derive(Clone, Copy)]
pub struct Limits {
    pub window: Duration,
    pub block: Duration,
    pub address_failures: u32,
    pub failures: u32,
    /// How long a credential being judged holds its place at most.
    pub lease: Duration,
}

impl SiteShare {
    pub fn up(&self) -> bool {
        self.shared.up()
    }

    /// A lease of its own for credential `digest` (hex).
    pub fn lease(&self, digest: &str) -> String {
        format!("{digest}:{}", self.shared.tag())
    }

    fn record_keys(&self, ip: IpAddr, user: Option<u64>) -> Vec<String> {
        let mut keys = Vec::with_capacity(6);
        for id in std::iter::once(record_id(ip, None)).chain(user.map(|u| record_id(ip, Some(u)))) {
            keys.push(self.keys.key("f", &id));
            keys.push(self.keys.key("j", &id));
            keys.push(self.keys.key("b", &id));
        }
        keys
    }

    /// Reserves `lease` to judge credential `digest` (hex) of `user` (its hash) at `ip`, or
    /// finds the block or its verdict. Unanswered, the lease is given back should the script
    /// have run after all.
    pub async fn reserve(
        &self,
        ip: IpAddr,
        user: Option<u64>,
        (digest, lease): (&str, &str),
        limits: &Limits,
    ) -> Remote {
        let mut keys = vec![self.keys.key("v", digest)];
        keys.extend(self.record_keys(ip, user));
        let mut args = vec![
            self.keys.prefix.clone(),
            digest.to_string(),
            lease.to_string(),
            limits.window.as_millis().to_string(),
            limits.lease.as_millis().to_string(),
            limits.address_failures.to_string(),
        ];
        if user.is_some() {
            args.push(limits.failures.to_string());
        }
        let shared = &self.shared;
        let was_up = shared.up();
        let answer: Option<Vec<Value>> = shared
            .call(
                "reserve",
                shared.timeout,
                shared
                    .scripts
                    .reserve
                    .evalsha_with_reload(&shared.client, keys, args),
            )
            .await;
        let Some(answer) = answer else {
            if was_up {
                self.release(ip, user, lease.to_string(), *limits);
            }
            return Remote::Unanswered;
        };
        let text = |i: usize| answer.get(i).and_then(|v| v.as_string());
        let number = |i: usize| answer.get(i).and_then(|v| v.as_i64()).unwrap_or(0);
        let ms = |i: usize| Duration::from_millis(u64::try_from(number(i)).unwrap_or(0));
        match text(0).as_deref() {
            Some("ok") => Remote::Reserved,
            Some("verdict") => match text(1).and_then(|j| serde_json::from_str(&j).ok()) {
                Some(verdict) => Remote::Verdict(verdict, ms(2), ms(3)),
                None => Remote::Unanswered,
            },
            Some("blocked") => Remote::Blocked {
                user: number(1) == 1,
                left: ms(2),
            },
            Some("full") => Remote::Full,
            _ => Remote::Unanswered,
        }
    }

    /// Gives `lease` back, in the background (the request went away, or Redis may have
    /// reserved it after the call timed out).
    pub fn release(&self, ip: IpAddr, user: Option<u64>, lease: String, limits: Limits) {
        let share = SiteShare {
            shared: self.shared.clone(),
            keys: self.keys.clone(),
        };
        tokio::spawn(async move {
            let user = user.map(|hash| (hash, None));
            share.settle(ip, user, &lease, false, None, &limits).await;
        });
    }

    /// Settles `lease` ('' for none): given back, and when `failed`, a failure counted
    /// (`credential`: its fingerprint, none for a malformed one). The records whose block it
    /// began: (address, user).
    pub async fn settle(
        &self,
        ip: IpAddr,
        user: Option<(u64, Option<&str>)>,
        lease: &str,
        failed: bool,
        credential: Option<u64>,
        limits: &Limits,
    ) -> (bool, bool) {
        let mut keys = vec![self.keys.blocks.clone()];
        keys.extend(self.record_keys(ip, user.map(|(hash, _)| hash)));
        let shared = &self.shared;
        let mut args = vec![
            lease.to_string(),
            if failed { "1" } else { "0" }.to_string(),
            credential.map_or_else(|| "-".to_string(), |c| format!("{c:016x}")),
            shared.tag(),
            limits.window.as_millis().to_string(),
            limits.block.as_millis().to_string(),
            self.keys.channel.clone(),
            shared.instance.clone(),
            ip.to_string(),
            user.map_or_else(String::new, |(hash, _)| hash.to_string()),
            user.and_then(|(_, name)| name).unwrap_or("").to_string(),
            limits.address_failures.to_string(),
            record_id(ip, None),
        ];
        if let Some((hash, _)) = user {
            args.push(limits.failures.to_string());
            args.push(record_id(ip, Some(hash)));
        }
        let begun: Option<Vec<i64>> = shared
            .call(
                "settle",
                shared.timeout,
                shared
                    .scripts
                    .settle
                    .evalsha_with_reload(&shared.client, keys, args),
            )
            .await;
        let begun = begun.unwrap_or_default();
        (begun.contains(&0), begun.contains(&1))
    }

    /// Keeps `verdict` on credential `digest` (hex), judged `ago`, for every instance until
    /// `keep` after its judgement.
    pub async fn keep_verdict(
        &self,
        digest: &str,
        verdict: &SharedVerdict,
        ago: Duration,
        keep: Duration,
    ) {
        let shared = &self.shared;
        let args = vec![
            self.keys.prefix.clone(),
            serde_json::to_string(verdict).unwrap_or_default(),
            verdict.user.clone().unwrap_or_default(),
            ago.as_millis().to_string(),
            keep.as_millis().to_string(),
        ];
        let key = self.keys.key("v", digest);
        let _: Option<i64> = shared
            .call(
                "verdict",
                shared.timeout,
                shared
                    .scripts
                    .verdict
                    .evalsha_with_reload(&shared.client, key, args),
            )
            .await;
    }

    /// Lifts on every instance the block of `user` (name and hash) at `ip`, or every block
    /// there; how many Redis held. Redis down: made once it is back (`None` now).
    pub async fn lift(
        &self,
        ip: IpAddr,
        user: Option<(&str, u64)>,
        block: Duration,
    ) -> Option<i64> {
        let lifted = self.shared.lift(&self.keys, ip, user, block).await;
        if lifted.is_none() {
            let user = user.map(|(name, hash)| (name.to_string(), hash));
            self.shared
                .wait_for(self.keys.clone(), Pending::Lift { ip, user, block });
        }
        lifted
    }

    /// Revokes `user` on every instance, remembered for `keep` (made once Redis is back, if
    /// it is down).
    pub async fn revoke(&self, user: &str, keep: Duration) {
        if !self.shared.revoke(&self.keys, user, keep).await {
            let user = user.to_string();
            self.shared
                .wait_for(self.keys.clone(), Pending::Revoke { user, keep });
        }
    }

    /// Purges the caches of every instance (entries under `prefix`; made once Redis is back,
    /// if it is down).
    pub async fn purge(&self, prefix: Option<&str>) {
        if !self.shared.purge(&self.keys, prefix).await {
            let prefix = prefix.map(str::to_string);
            self.shared
                .wait_for(self.keys.clone(), Pending::Purge { prefix });
        }
    }
}

/// Connects to Redis, follows the sites' channels and checks that Redis answers, for as long
/// as the process serves.
pub struct SharedService(pub Arc<Shared>);

#[async_trait]
impl BackgroundService for SharedService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let shared = &self.0;
        metrics::shared_state_up(false);
        let _client = shared.client.connect();
        let _subscriber = shared.subscriber.connect();
        let _resubscribe = shared.subscriber.manage_subscriptions();
        let channels: Vec<String> = shared
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        // Announcements, each applied as it comes.
        let listening = tokio::spawn({
            let shared = shared.clone();
            async move {
                let mut messages = shared.subscriber.message_rx();
                loop {
                    match messages.recv().await {
                        Ok(message) => {
                            if let Some(text) = message.value.as_string() {
                                shared.dispatch(&message.channel, &text);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            log::warn!(
                                "shared state: {n} announcements missed; the blocks and admin \
                                 actions are read again"
                            );
                            shared.resync(false).await;
                        }
                        Err(_) => return,
                    }
                }
            }
        });
        let adding = tokio::spawn({
            let shared = shared.clone();
            async move {
                let mut tick = tokio::time::interval(RATES_EVERY);
                loop {
                    tick.tick().await;
                    shared.add_rates().await;
                }
            }
        });
        let mut subscribed = false;
        let mut resynced = Instant::now();
        let mut first = true;
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !shared.up() {
                        shared.check(first).await;
                        first = false;
                        resynced = Instant::now();
                    } else if resynced.elapsed() >= RESYNC_EVERY {
                        shared.check(false).await;
                        if shared.up() {
                            shared.resync(false).await;
                        }
                        resynced = Instant::now();
                    }
                    if !subscribed && shared.up() {
                        let joined = tokio::time::timeout(
                            ADMIN_TIMEOUT,
                            shared.subscriber.subscribe(channels.clone()),
                        )
                        .await;
                        subscribed = matches!(joined, Ok(Ok(())));
                    }
                }
                _ = shutdown.changed() => {
                    listening.abort();
                    adding.abort();
                    let _ = tokio::time::timeout(ADMIN_TIMEOUT, shared.client.quit()).await;
                    let _ = tokio::time::timeout(ADMIN_TIMEOUT, shared.subscriber.quit()).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_read_as_the_scripts_write_them() {
        let block = r#"{"from":"a1","kind":"block","ip":"10.0.0.1","user":"42","name":"agent1","left_ms":1800000,"at":5}"#;
        let envelope: Envelope = serde_json::from_str(block).unwrap();
        assert_eq!(envelope.from, "a1");
        assert_eq!(envelope.at, Some(5));
        assert!(matches!(
            envelope.event,
            Event::Block { left_ms: 1_800_000, ref user, .. } if user.as_deref() == Some("42")
        ));
        let lift = r#"{"from":"a1","kind":"lift","ip":"10.0.0.1","at":7,"tag":"a1-3"}"#;
        let envelope: Envelope = serde_json::from_str(lift).unwrap();
        assert_eq!(envelope.tag.as_deref(), Some("a1-3"));
        assert!(matches!(envelope.event, Event::Lift { user: None, .. }));
    }

    #[test]
    fn record_ids_name_the_address_and_the_user() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(record_id(ip, None), "2001:db8::1");
        assert_eq!(record_id(ip, Some(0xab)), "2001:db8::1/00000000000000ab");
    }
}
