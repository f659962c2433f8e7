//! Per-client limits: request rate per client (address, or user ccedge verified) and path prefix
//! (pingora-limits' rate estimator) and the request body size.

use crate::config::{Per, RateRule, Role};
use crate::state::rates::{self, RateShare, Who};
use pingora_limits::rate::Rate;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Counting slots per hash row of the estimator: with thousands of agents behind one site this
/// keeps collisions (which can only over-count) rare.
const ESTIMATOR_SLOTS: usize = 8192;
const ESTIMATOR_HASHES: usize = 4;

/// The rate rules of one service and the counts they are judged on.
pub struct RateLimiter {
    rules: Rules,
    rate: Rate,
    /// With `server.shared_state`: the counts every instance adds up.
    share: Option<Arc<RateShare>>,
}

enum Rules {
    /// The service's own list: the first rule whose prefix matches the path counts.
    ByPath(Vec<RateRule>),
    /// One rule (or none) per route: a Finesse site without `rate_limits`, by server role.
    ByRoute(Vec<Option<RateRule>>),
}

/// The limit a Finesse server's role gets when its site sets no `rate_limits` (the vendor's
/// reference values; `other` is not limited), counted `per` address or user.
pub fn role_default(role: Role, per: Per) -> Option<RateRule> {
    let (per_second, burst) = match role {
        Role::Finesse => (90, 50),
        Role::Ids => (5, 4),
        Role::Cuic => (50, 100),
        Role::Livedata => (25, 25),
        Role::Chat => (30, 30),
        Role::Other => return None,
    };
    Some(RateRule {
        path_prefix: "/".into(),
        per_second,
        burst,
        per,
    })
}

/// The open connections a client address may hold on a Finesse port whose servers have `roles`,
/// when the site sets no `max_connections_per_ip` (the vendor's values: finesse 12, ids 4,
/// others 12; with several roles on one port, the most generous).
pub fn role_connections(roles: impl IntoIterator<Item = Role>) -> u32 {
    roles
        .into_iter()
        .map(|role| match role {
            Role::Ids => 4,
            _ => 12,
        })
        .max()
        .unwrap_or(12)
}

/// The open connections a client address may hold on a digital channel by default.
pub const DIGITAL_CONNECTIONS: u32 = 50;

/// A request refused by a rate rule.
#[derive(Debug, PartialEq, Eq)]
pub struct Exceeded<'a> {
    pub rule: &'a RateRule,
}

/// When a request's rules are checked: rules per address before authentication (so that a
/// flood is refused before it costs a credential check), rules per user after it, when the
/// user is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    BeforeAuth,
    AfterAuth,
}

/// Who a request counts as under a rule: its client's address, or the user ccedge verified.
enum Counted<'a> {
    Address(IpAddr),
    User(&'a str),
}

/// The estimator's key: who, and which rule.
struct Key<'a>(Counted<'a>, usize);

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.1.hash(state);
        match &self.0 {
            Counted::Address(ip) => {
                state.write_u8(0);
                ip.hash(state);
            }
            Counted::User(name) => {
                // One user whatever the case of the name it signed in with.
                state.write_u8(1);
                for b in name.bytes() {
                    state.write_u8(b.to_ascii_lowercase());
                }
            }
        }
    }
}

impl RateLimiter {
    /// Rules matched by path prefix, first match counting. `None` when there are none.
    pub fn by_path(rules: Vec<RateRule>) -> Option<Self> {
        (!rules.is_empty()).then(|| Self::with(Rules::ByPath(rules)))
    }

    /// Rule `i` (if any) for route `i`. `None` when no route has one.
    pub fn by_route(rules: Vec<Option<RateRule>>) -> Option<Self> {
        rules
            .iter()
            .any(Option::is_some)
            .then(|| Self::with(Rules::ByRoute(rules)))
    }

    fn with(rules: Rules) -> Self {
        RateLimiter {
            rules,
            rate: Rate::new_with_estimator_config(
                Duration::from_secs(1),
                ESTIMATOR_HASHES,
                ESTIMATOR_SLOTS,
            ),
            share: None,
        }
    }

    /// Counts shared with the other instances through `share`, when given.
    pub fn shared(mut self, share: Option<Arc<RateShare>>) -> Self {
        self.share = share;
        self
    }

    /// The rule that applies to a request to `route` for `path`, and its index.
    fn rule(&self, route: usize, path: &str) -> Option<(usize, &RateRule)> {
        match &self.rules {
            Rules::ByPath(rules) => rules
                .iter()
                .enumerate()
                .find(|(_, r)| path.starts_with(r.path_prefix.as_str())),
            Rules::ByRoute(rules) => rules
                .get(route)
                .and_then(|r| r.as_ref())
                .map(|r| (route, r)),
        }
    }

    /// Counts the request (to `route`, for `path`) against the rule that applies, when that
    /// rule is checked at `stage`: per `user` when the rule counts per user and a user was
    /// verified, else per `client` (its lockout key). `Err` when that rule's limit is exceeded.
    pub fn check(
        &self,
        stage: Stage,
        client: IpAddr,
        user: Option<&str>,
        route: usize,
        path: &str,
    ) -> Result<(), Exceeded<'_>> {
        let Some((index, rule)) = self.rule(route, path) else {
            return Ok(());
        };
        let due = match rule.per {
            Per::Address => Stage::BeforeAuth,
            Per::User => Stage::AfterAuth,
        };
        if due != stage {
            return Ok(());
        }
        let counted = match (rule.per, user) {
            (Per::User, Some(user)) => Counted::User(user),
            _ => Counted::Address(client),
        };
        let key = Key(counted, index);
        let mut current = self.rate.observe(&key, 1);
        // Past a quarter of the limit, what the other instances counted this second (and the
        // second before) too.
        let mut others_before = 0;
        if let Some(share) = &self.share {
            if current.saturating_mul(4) > rule.per_second as isize {
                let who = match key.0 {
                    Counted::Address(ip) => Who::Address(ip),
                    Counted::User(name) => share.user(name),
                };
                let second = rates::second();
                let (others, before) =
                    share.count(index, who, second, current as i64, rule.per_second);
                current = current.saturating_add(others as isize);
                others_before = before;
            }
        }
        self.judge(rule, &key, current, others_before)
    }

    /// `others_before`: what other instances counted the second before (shared state).
    fn judge<'r>(
        &self,
        rule: &'r RateRule,
        key: &Key,
        current: isize,
        others_before: i64,
    ) -> Result<(), Exceeded<'r>> {
        // The previous second only matters once this one is past the plain limit.
        let previous = if current > rule.per_second as isize {
            self.rate.rate(key) + others_before as f64
        } else {
            0.0
        };
        if admit(rule, previous, current) {
            Ok(())
        } else {
            Err(Exceeded { rule })
        }
    }
}

/// The decision, per client and rule, each second: up to `per_second` requests; a second that
/// follows a calm one (at most `per_second` requests seen) also admits `burst` more. A client
/// that keeps sending too fast is held to `per_second` — what it sends counts, admitted or not.
pub fn admit(rule: &RateRule, previous_second: f64, this_second: isize) -> bool {
    let calm_before = previous_second <= f64::from(rule.per_second);
    let allowance = if calm_before {
        i64::from(rule.per_second) + i64::from(rule.burst)
    } else {
        i64::from(rule.per_second)
    };
    (this_second as i64) <= allowance
}

/// Whether a declared body length is over the limit.
pub fn body_too_large(declared: Option<u64>, max: u64) -> bool {
    declared.is_some_and(|len| len > max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, per_second: u32, burst: u32) -> RateRule {
        RateRule {
            path_prefix: prefix.into(),
            per_second,
            burst,
            per: Per::Address,
        }
    }

    fn by_address<'a>(
        limiter: &'a RateLimiter,
        ip: IpAddr,
        route: usize,
        path: &str,
    ) -> Result<(), Exceeded<'a>> {
        limiter.check(Stage::BeforeAuth, ip, None, route, path)
    }

    #[test]
    fn burst_only_after_a_calm_second() {
        let r = rule("/", 100, 200);
        assert!(admit(&r, 0.0, 300));
        assert!(!admit(&r, 0.0, 301));
        assert!(admit(&r, 100.0, 300));
        assert!(!admit(&r, 101.0, 101));
        assert!(admit(&r, 5000.0, 100));
    }

    #[test]
    fn first_matching_rule_counts_and_others_pass() {
        let limiter =
            RateLimiter::by_path(vec![rule("/drapi/", 2, 1), rule("/", 1000, 0)]).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let verdicts: Vec<bool> = (0..5)
            .map(|_| by_address(&limiter, ip, 0, "/drapi/v1/tasks").is_ok())
            .collect();
        assert_eq!(verdicts, [true, true, true, false, false]);
        let refused = by_address(&limiter, ip, 0, "/drapi/v1/tasks").unwrap_err();
        assert_eq!(refused.rule.path_prefix, "/drapi/");
        assert!(
            by_address(&limiter, other, 0, "/drapi/v1/tasks").is_ok(),
            "per client"
        );
        assert!(
            by_address(&limiter, ip, 0, "/dataconn/status").is_ok(),
            "per rule"
        );
    }

    #[test]
    fn role_defaults_count_per_route() {
        let limiter = RateLimiter::by_route(vec![
            role_default(Role::Ids, Per::Address),
            role_default(Role::Other, Per::Address),
        ])
        .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let ids: Vec<bool> = (0..10)
            .map(|_| by_address(&limiter, ip, 0, "/ids/x").is_ok())
            .collect();
        assert_eq!(
            ids.iter().filter(|ok| **ok).count(),
            9,
            "IdS: 5 per second, burst 4"
        );
        assert!(
            (0..100).all(|_| by_address(&limiter, ip, 1, "/x").is_ok()),
            "other: no limit"
        );
        assert_eq!(
            role_default(Role::Finesse, Per::User).map(|r| (r.per_second, r.burst, r.per)),
            Some((90, 50, Per::User))
        );
    }

    #[test]
    fn per_user_rules_count_verified_users_after_authentication() {
        let mut per_user = rule("/", 2, 0);
        per_user.per = Per::User;
        let limiter = RateLimiter::by_path(vec![per_user]).unwrap();
        let office: IpAddr = "192.0.2.1".parse().unwrap();
        let check = |stage, user| limiter.check(stage, office, user, 0, "/finesse/api/User");
        assert!(
            (0..10).all(|_| check(Stage::BeforeAuth, None).is_ok()),
            "not counted before authentication"
        );
        for user in ["alice", "bob", "carol"] {
            assert!(check(Stage::AfterAuth, Some(user)).is_ok());
            assert!(check(Stage::AfterAuth, Some(user)).is_ok());
        }
        assert!(
            check(Stage::AfterAuth, Some("ALICE")).is_err(),
            "alice's third"
        );
        assert!(
            check(Stage::AfterAuth, None).is_ok(),
            "the address has its own count"
        );
        assert!(check(Stage::AfterAuth, None).is_ok());
        assert!(check(Stage::AfterAuth, None).is_err());
    }

    #[test]
    fn no_rules_no_limiter() {
        assert!(RateLimiter::by_path(Vec::new()).is_none());
        assert!(RateLimiter::by_route(vec![None, None]).is_none());
    }

    #[test]
    fn body_limit() {
        assert!(!body_too_large(None, 10));
        assert!(!body_too_large(Some(10), 10));
        assert!(body_too_large(Some(11), 10));
    }
}
