//! The state every instance shares, in Redis (`server.shared_state`): login failures, blocks and
//! the places of credentials being judged (Lua scripts, atomic in Redis and timed by its clock),
//! kept verdicts under their keyed hashes, revocations, and the admin actions every instance
//! must apply (published on a channel per site).
//!
//! Each instance keeps its local state as a mirror, and the common request path (a known
//! verdict, no block) never asks Redis. A credential to be judged reserves its place in Redis
//! too (which also answers with a verdict another instance kept); a failure is counted there
//! and a block begun there is published. No call waits longer than `timeout_ms`: one that does
//! marks Redis down, and until a check every 500 ms finds it answering again, every call is
//! skipped and the instance works on its local state alone (said once in the log, and in
//! `ccedge_shared_state_up`). Back, the instances exchange their blocks.

use crate::config::SharedState;
use crate::observe::metrics;
use crate::state::rates::{self, RateShare};
use async_trait::async_trait;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{
    ClientLike, EventInterface, KeysInterface, PubsubInterface, SortedSetsInterface,
};
use fred::prelude::{Builder, Config, ReconnectPolicy, TlsConnector};
use fred::types::scripts::Script;
use fred::types::Value;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the rate counts are added up.
const RATES_EVERY: Duration = Duration::from_millis(200);
/// How long a second's rate count is kept in Redis.
const RATE_KEPT_MS: i64 = 3000;
/// How often a Redis marked down is asked again.
const RECHECK_EVERY: Duration = Duration::from_millis(500);
/// How often the blocks are read again while connected (announcements missed are caught up).
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// The longest a check run on the admin listener's behalf (a lift, a revocation) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What a site does with what other instances announce.
pub trait Listener: Send + Sync {
    /// Another instance blocked the address `ip`, or with `user` (its hash and name) the user
    /// there, for `left`.
    fn blocked(&self, ip: IpAddr, user: Option<(u64, Option<&str>)>, left: Duration);
    /// The admin listener of an instance lifted the block of `user` at `ip`, or every block
    /// there.
    fn lifted(&self, ip: IpAddr, user: Option<&str>);
    /// The admin listener of an instance revoked `user`.
    fn revoked(&self, user: &str);
    /// The admin listener of an instance purged the caches (entries under `prefix`).
    fn purged(&self, prefix: Option<&str>);
    /// The blocks this instance holds, to give Redis back after it was down.
    fn blocks(&self) -> Vec<HeldBlock>;
}

/// A block an instance holds: the address, the user there (hash and name), the time left.
pub struct HeldBlock {
    pub ip: IpAddr,
    pub user: Option<(u64, Option<String>)>,
    pub left: Duration,
}

/// Each site's keys and listener, by channel.
type Sites = HashMap<String, (SiteKeys, Arc<dyn Listener>)>;

/// An announcement on a site's channel.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
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

/// A verdict as kept in Redis (`judged`: Redis's clock, in ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedVerdict {
    pub valid: bool,
    pub user: Option<String>,
    pub why: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged: Option<u64>,
}

/// What Redis says of a credential to be judged.
#[derive(Debug, PartialEq)]
pub enum Remote {
    /// Its place is reserved on every instance: judge it, then settle.
    Reserved,
    /// Another instance judged it: this verdict, kept this much longer.
    Verdict(SharedVerdict, Duration),
    /// The address (`user`: false) or the user there is blocked this much longer.
    Blocked { user: bool, left: Duration },
    /// The address or the user has as many credentials being judged as failures left.
    Full,
    /// Redis did not answer (or is down): decide on local state.
    Unanswered,
}

struct Scripts {
    reserve: Script,
    settle: Script,
    blocks: Script,
    lift: Script,
    verdict: Script,
    revoke: Script,
}

pub struct Shared {
    client: Client,
    subscriber: SubscriberClient,
    timeout: Duration,
    up: AtomicBool,
    /// Tells this instance's announcements from others'.
    instance: String,
    shown_url: String,
    scripts: Scripts,
    listeners: Mutex<Sites>,
    /// Makes each failure's member unique.
    tags: AtomicU64,
    /// The rate counts of each service.
    rates: Mutex<Vec<Arc<RateShare>>>,
}

impl Shared {
    /// The clients (not connected yet: `SharedService` connects them).
    pub fn new(settings: &SharedState) -> Result<Arc<Shared>, String> {
        let mut config = Config::from_url(&settings.redis_url.0)
            .map_err(|e| format!("server.shared_state.redis_url: {}", e.details()))?;
        if let Some(password) = &settings.password {
            config.password = Some(password.0.clone());
        }
        if let Some(tls) = &settings.tls {
            config.tls = Some(tls_connector(tls)?.into());
        }
        // A command not sent while disconnected fails at once instead of waiting for the
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
            instance: format!("{:016x}", rand::random::<u64>()),
            shown_url: settings.shown_url.clone(),
            scripts: Scripts {
                reserve: script(include_str!("scripts/reserve.lua")),
                settle: script(include_str!("scripts/settle.lua")),
                blocks: script(include_str!("scripts/blocks.lua")),
                lift: script(include_str!("scripts/lift.lua")),
                verdict: script(include_str!("scripts/verdict.lua")),
                revoke: script(include_str!("scripts/revoke.lua")),
            },
            listeners: Mutex::new(HashMap::new()),
            tags: AtomicU64::new(0),
            rates: Mutex::new(Vec::new()),
        }))
    }

    /// The share of site `name`.
    pub fn site(self: &Arc<Self>, name: &str) -> Arc<SiteShare> {
        let prefix = format!("ccedge:{{{name}}}:");
        Arc::new(SiteShare {
            shared: self.clone(),
            keys: SiteKeys {
                channel: format!("{prefix}events"),
                blocks: format!("{prefix}blocks"),
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
        let share = Arc::new(RateShare::new(name, names));
        self.rates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(share.clone());
        share
    }

    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Adds this instance's rate counts to Redis's, and hears the totals.
    async fn add_rates(&self) {
        let shares = self.rates.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = rates::second();
        for share in shares {
            let due = share.due(now);
            if due.is_empty() || !self.up() {
                continue;
            }
            let pipeline = self.client.pipeline();
            for d in &due {
                let _: Result<(), _> = pipeline.incr_by(d.key.as_str(), d.delta).await;
                let _: Result<(), _> = pipeline.pexpire(d.key.as_str(), RATE_KEPT_MS, None).await;
            }
            let totals: Option<Vec<Value>> = self.call("rates", self.timeout, pipeline.all()).await;
            for (d, total) in due.iter().zip(totals.unwrap_or_default().iter().step_by(2)) {
                if let Some(total) = total.as_i64() {
                    share.heard(d, total);
                }
            }
        }
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

    fn down(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::shared_state_up(false);
            log::warn!(
                "shared state: Redis at {} is down or slow ({why}): lockouts, verdicts, rate \
                 counters and admin actions are local to this instance until it answers again",
                self.shown_url
            );
        }
    }

    /// Asks Redis whether it answers; back, the instances exchange their blocks.
    async fn check(&self) {
        let answered = tokio::time::timeout(self.timeout.max(RECHECK_EVERY / 2), async {
            self.client.ping::<String>(None).await
        })
        .await;
        match answered {
            Ok(Ok(_)) if !self.up() => {
                self.up.store(true, Ordering::Release);
                metrics::shared_state_up(true);
                log::info!(
                    "shared state: Redis at {} answers: lockouts, verdicts, rate counters and \
                     admin actions are shared",
                    self.shown_url
                );
                self.exchange_blocks().await;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.down(e.details()),
            Err(_) => self.down("no answer to PING"),
        }
    }

    /// Gives Redis the blocks this instance holds, then takes those Redis holds.
    async fn exchange_blocks(&self) {
        let sites: Vec<(SiteKeys, Arc<dyn Listener>)> = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for (keys, listener) in sites {
            self.give_blocks(&keys, listener.as_ref()).await;
            self.take_blocks(&keys, listener.as_ref()).await;
        }
    }

    /// Hands an announcement to its site, unless this instance made it.
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
            log::debug!(
                "shared state: an announcement on {channel} that is not ccedge's: {text:?}"
            );
            return;
        };
        if envelope.from == self.instance {
            return;
        }
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
            Event::Revoke { user } => listener.revoked(&user),
            Event::Purge { prefix } => listener.purged(prefix.as_deref()),
        }
    }

    /// Gives Redis the blocks `listener` holds that it lacks (after Redis was down), and tells
    /// the instances connected already.
    async fn give_blocks(&self, site: &SiteKeys, listener: &dyn Listener) {
        for HeldBlock { ip, user, left } in listener.blocks() {
            let hash = user.as_ref().map(|(hash, _)| *hash);
            let id = record_id(ip, hash);
            let name = user.and_then(|(_, name)| name).unwrap_or_default();
            let ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1);
            let set = self.client.set::<Value, _, _>(
                format!("{}b:{id}", site.prefix),
                name.clone(),
                Some(fred::types::Expiration::PX(ms)),
                Some(fred::types::SetOptions::NX),
                false,
            );
            let Some(set) = self.call("give blocks", ADMIN_TIMEOUT, set).await else {
                return;
            };
            if set.is_null() {
                // Redis holds it already.
                continue;
            }
            let until = crate::observe::access_log::epoch_ms() as f64 + ms as f64;
            let index = self.client.zadd::<Value, _, _>(
                site.blocks.clone(),
                None,
                None,
                false,
                false,
                (until, id),
            );
            let _ = self.call("give blocks", ADMIN_TIMEOUT, index).await;
            let envelope = Envelope {
                from: self.instance.clone(),
                event: Event::Block {
                    ip: ip.to_string(),
                    user: hash.map(|h| h.to_string()),
                    name: Some(name),
                    left_ms: u64::try_from(ms).unwrap_or(0),
                },
            };
            let text = serde_json::to_string(&envelope).unwrap_or_default();
            let told = self
                .client
                .publish::<Value, _, _>(site.channel.clone(), text);
            let _ = self.call("give blocks", ADMIN_TIMEOUT, told).await;
        }
    }

    /// Takes the blocks Redis holds (announcements missed while disconnected).
    async fn take_blocks(&self, site: &SiteKeys, listener: &dyn Listener) {
        let shared = self;
        let blocks: Option<Vec<Value>> = shared
            .call(
                "take blocks",
                ADMIN_TIMEOUT,
                shared.scripts.blocks.evalsha_with_reload(
                    &shared.client,
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

    fn tag(&self) -> String {
        format!(
            "{}-{}",
            self.instance,
            self.tags.fetch_add(1, Ordering::Relaxed)
        )
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

/// One site's keys and channel in Redis.
#[derive(Clone)]
struct SiteKeys {
    /// `ccedge:{<site>}:`: every key of the site (one hash slot).
    prefix: String,
    channel: String,
    blocks: String,
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

    fn record_keys(&self, ip: IpAddr, user: Option<u64>) -> Vec<String> {
        let mut keys = Vec::with_capacity(6);
        for id in std::iter::once(record_id(ip, None)).chain(user.map(|u| record_id(ip, Some(u)))) {
            keys.push(format!("{}f:{id}", self.keys.prefix));
            keys.push(format!("{}j:{id}", self.keys.prefix));
            keys.push(format!("{}b:{id}", self.keys.prefix));
        }
        keys
    }

    /// Reserves a place to judge credential `digest` (hex) of `user` (its hash) at `ip`, or
    /// finds its verdict or the block.
    pub async fn reserve(
        &self,
        ip: IpAddr,
        user: Option<u64>,
        digest: &str,
        limits: &Limits,
    ) -> Remote {
        let mut keys = vec![format!("{}v:{digest}", self.keys.prefix)];
        keys.extend(self.record_keys(ip, user));
        let mut args = vec![
            self.keys.prefix.clone(),
            digest.to_string(),
            limits.window.as_millis().to_string(),
            limits.lease.as_millis().to_string(),
            limits.address_failures.to_string(),
        ];
        if user.is_some() {
            args.push(limits.failures.to_string());
        }
        let shared = &self.shared;
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
            return Remote::Unanswered;
        };
        let text = |i: usize| answer.get(i).and_then(|v| v.as_string());
        let number = |i: usize| answer.get(i).and_then(|v| v.as_i64()).unwrap_or(0);
        let ms = |i: usize| Duration::from_millis(u64::try_from(number(i)).unwrap_or(0));
        match text(0).as_deref() {
            Some("ok") => Remote::Reserved,
            Some("verdict") => match text(1).and_then(|j| serde_json::from_str(&j).ok()) {
                Some(verdict) => Remote::Verdict(verdict, ms(2)),
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

    /// Settles credential `digest` (hex): its places given back, and when `failed`, a failure
    /// counted (`credential`: its fingerprint, none for a malformed one). The records whose
    /// block it began: (address, user).
    #[allow(clippy::too_many_arguments)]
    pub async fn settle(
        &self,
        ip: IpAddr,
        user: Option<(u64, Option<&str>)>,
        digest: &str,
        failed: bool,
        credential: Option<u64>,
        limits: &Limits,
    ) -> (bool, bool) {
        let mut keys = vec![self.keys.blocks.clone()];
        keys.extend(self.record_keys(ip, user.map(|(hash, _)| hash)));
        let shared = &self.shared;
        let mut args = vec![
            digest.to_string(),
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

    /// Keeps `verdict`, judged `ago`, for every instance until `keep` after its judgement.
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
        let key = format!("{}v:{digest}", self.keys.prefix);
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
    /// there.
    pub async fn lift(&self, ip: IpAddr, user: Option<(&str, u64)>) {
        let shared = &self.shared;
        let args = vec![
            self.keys.prefix.clone(),
            ip.to_string(),
            user.map_or_else(String::new, |(_, hash)| record_id(ip, Some(hash))),
            self.keys.channel.clone(),
            shared.instance.clone(),
            user.map_or("", |(name, _)| name).to_string(),
        ];
        let _: Option<i64> = shared
            .call(
                "lift",
                ADMIN_TIMEOUT,
                shared.scripts.lift.evalsha_with_reload(
                    &shared.client,
                    self.keys.blocks.clone(),
                    args,
                ),
            )
            .await;
    }

    /// Revokes `user` on every instance, remembered for `keep`.
    pub async fn revoke(&self, user: &str, keep: Duration) {
        let shared = &self.shared;
        let key = format!("{}r:{}", self.keys.prefix, user.to_ascii_lowercase());
        let args = vec![
            keep.as_millis().to_string(),
            self.keys.channel.clone(),
            shared.instance.clone(),
            user.to_string(),
        ];
        let _: Option<i64> = shared
            .call(
                "revoke",
                ADMIN_TIMEOUT,
                shared
                    .scripts
                    .revoke
                    .evalsha_with_reload(&shared.client, key, args),
            )
            .await;
    }

    /// Purges the caches of every instance (entries under `prefix`).
    pub async fn purge(&self, prefix: Option<&str>) {
        let shared = &self.shared;
        let envelope = Envelope {
            from: shared.instance.clone(),
            event: Event::Purge {
                prefix: prefix.map(str::to_string),
            },
        };
        let text = serde_json::to_string(&envelope).unwrap_or_default();
        let _: Option<i64> = shared
            .call(
                "purge",
                ADMIN_TIMEOUT,
                shared.client.publish(self.keys.channel.clone(), text),
            )
            .await;
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
        let mut messages = shared.subscriber.message_rx();
        let mut subscribed = false;
        let mut resynced = Instant::now();
        let mut tick = tokio::time::interval(RECHECK_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let was_up = shared.up();
                    if !was_up || resynced.elapsed() >= RESYNC_EVERY {
                        shared.check().await;
                    }
                    if !subscribed && shared.up() {
                        let joined = tokio::time::timeout(
                            ADMIN_TIMEOUT,
                            shared.subscriber.subscribe(channels.clone()),
                        )
                        .await;
                        subscribed = matches!(joined, Ok(Ok(())));
                    }
                    if was_up && shared.up() && resynced.elapsed() >= RESYNC_EVERY {
                        resynced = Instant::now();
                        shared.exchange_blocks().await;
                    }
                }
                message = messages.recv() => match message {
                    Ok(message) => {
                        if let Some(text) = message.value.as_string() {
                            shared.dispatch(&message.channel, &text);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        log::warn!("shared state: {n} announcements missed; reading the blocks again");
                        shared.exchange_blocks().await;
                    }
                    Err(_) => return,
                },
                _ = shutdown.changed() => {
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
        let block = r#"{"from":"a1","kind":"block","ip":"10.0.0.1","user":"42","name":"agent1","left_ms":1800000}"#;
        let envelope: Envelope = serde_json::from_str(block).unwrap();
        assert_eq!(envelope.from, "a1");
        assert!(matches!(
            envelope.event,
            Event::Block { left_ms: 1_800_000, ref user, .. } if user.as_deref() == Some("42")
        ));
        let lift = r#"{"from":"a1","kind":"lift","ip":"10.0.0.1"}"#;
        let envelope: Envelope = serde_json::from_str(lift).unwrap();
        assert!(matches!(envelope.event, Event::Lift { user: None, .. }));
        let purge = serde_json::to_string(&Envelope {
            from: "b".into(),
            event: Event::Purge { prefix: None },
        })
        .unwrap();
        assert_eq!(purge, r#"{"from":"b","kind":"purge","prefix":null}"#);
    }

    #[test]
    fn record_ids_name_the_address_and_the_user() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(record_id(ip, None), "2001:db8::1");
        assert_eq!(record_id(ip, Some(0xab)), "2001:db8::1/00000000000000ab");
    }
}
