//! Whether an upstream response may be kept, and how long it stays fresh: the upstream's
//! `Cache-Control` (`no-store` and `private` are never kept, `no-cache` is kept but revalidated
//! every time, `s-maxage` over `max-age`), then `Expires`, then the site's default; less the
//! upstream's `Age`. A response that sets a cookie or varies on everything (`Vary: *`) is never
//! kept, nor are statuses other than 200, 203, 301 and 308. A response to a request that carried
//! credentials is kept only when the upstream marked it for everyone (`public` or `s-maxage`,
//! RFC 9111 section 3.5, without its `must-revalidate` exception): the cache is shared, and what
//! one agent's credentials fetched must not reach another agent.

use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::{calculate_expires_header_time, calculate_serve_stale_durations};
use pingora::cache::{CacheMeta, CacheMetaDefaults};
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// How long past its freshness a response is still served when the upstream fails.
pub const STALE_IF_ERROR: Duration = Duration::from_secs(24 * 3600);

pub struct Freshness {
    default_fresh: Duration,
    /// Stale-while-revalidate and stale-if-error when the upstream gives none.
    stale: CacheMetaDefaults,
}

impl Freshness {
    pub fn new(default_fresh: Duration, stale_while_revalidate: Duration) -> Self {
        let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        Freshness {
            default_fresh,
            stale: CacheMetaDefaults::new(
                |_| None,
                seconds(stale_while_revalidate),
                seconds(STALE_IF_ERROR),
            ),
        }
    }

    /// The metadata to keep `resp` under, or why it is not kept. `credentialed`: the response
    /// answers a request that carried credentials.
    pub fn judge(
        &self,
        resp: &ResponseHeader,
        credentialed: bool,
        now: SystemTime,
    ) -> Result<CacheMeta, &'static str> {
        if !matches!(resp.status.as_u16(), 200 | 203 | 301 | 308) {
            return Err("status not cacheable");
        }
        if resp.headers.contains_key(http::header::SET_COOKIE) {
            return Err("Set-Cookie");
        }
        let varies_on_everything = resp
            .headers
            .get_all(http::header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|name| name.trim() == "*");
        if varies_on_everything {
            return Err("Vary: *");
        }
        let cc = CacheControl::from_resp_headers(resp);
        if let Some(cc) = &cc {
            if cc.no_store() {
                return Err("no-store");
            }
            if cc.private() || cc.is_cacheable() == Cacheable::No {
                return Err("private");
            }
        }
        let for_everyone = cc
            .as_ref()
            .is_some_and(|cc| cc.public() || cc.s_maxage().ok().flatten().is_some());
        if credentialed && !for_everyone {
            return Err("a response to a request with credentials, not marked public");
        }
        let age = resp
            .headers
            .get(http::header::AGE)
            .and_then(|a| a.to_str().ok())
            .and_then(|a| a.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let relative = cc.as_ref().and_then(|cc| cc.fresh_duration());
        let fresh_until = match relative {
            Some(ttl) => until(now, ttl.saturating_sub(age)),
            None => match calculate_expires_header_time(resp) {
                Some(expires) => expires,
                None => until(now, self.default_fresh.saturating_sub(age)),
            },
        };
        let (stale_while_revalidate, stale_if_error) =
            calculate_serve_stale_durations(cc.as_ref(), &self.stale);
        let mut header = resp.clone();
        header.remove_header(&http::header::AGE);
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        Ok(CacheMeta::new(
            fresh_until,
            now,
            stale_while_revalidate,
            stale_if_error,
            header,
        ))
    }
}

/// `now + ttl`; a zero TTL is already stale (revalidated on the next request).
fn until(now: SystemTime, ttl: Duration) -> SystemTime {
    if ttl.is_zero() {
        now - Duration::from_secs(1)
    } else {
        now + ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn policy() -> Freshness {
        Freshness::new(Duration::from_secs(300), Duration::from_secs(60))
    }

    fn ttl(headers: &[(&str, &str)]) -> Result<i64, &'static str> {
        let now = SystemTime::now();
        let meta = policy().judge(&resp(200, headers), false, now)?;
        Ok(match meta.fresh_until().duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64) - 1,
        })
    }

    #[test]
    fn lifetimes() {
        assert_eq!(ttl(&[]), Ok(300));
        assert_eq!(ttl(&[("cache-control", "max-age=60")]), Ok(60));
        assert_eq!(ttl(&[("cache-control", "max-age=60, s-maxage=10")]), Ok(10));
        assert_eq!(
            ttl(&[("cache-control", "max-age=60"), ("age", "50")]),
            Ok(10)
        );
        assert_eq!(ttl(&[("age", "100")]), Ok(200));
        assert!(
            ttl(&[("cache-control", "no-cache")]).unwrap() < 0,
            "always revalidated"
        );
        assert!(ttl(&[("cache-control", "max-age=0")]).unwrap() < 0);
        assert!(ttl(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]).unwrap() < 0);
        let later = (chrono::Utc::now() + chrono::Duration::seconds(3600))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let t = ttl(&[("expires", &later)]).unwrap();
        assert!((3590..=3600).contains(&t), "{t}");
    }

    #[test]
    fn never_kept() {
        for headers in [
            &[("cache-control", "no-store")][..],
            &[("cache-control", "private")],
            &[("cache-control", "private, max-age=600")],
            &[("set-cookie", "JSESSIONID=1")],
            &[("vary", "Accept-Language, *")],
        ] {
            assert!(ttl(headers).is_err(), "{headers:?} kept");
        }
        let now = SystemTime::now();
        for status in [302, 404, 500, 206] {
            assert!(
                policy().judge(&resp(status, &[]), false, now).is_err(),
                "{status}"
            );
        }
    }

    #[test]
    fn answers_to_credentials_are_kept_only_when_marked_for_everyone() {
        let now = SystemTime::now();
        let judged = |headers: &[(&str, &str)]| {
            policy()
                .judge(&resp(200, headers), true, now)
                .map(|m| m.fresh_until() > now)
        };
        for mine in [
            &[][..],
            &[("cache-control", "max-age=600")],
            &[("cache-control", "max-age=600, must-revalidate")],
            &[("cache-control", "must-revalidate")],
            &[("cache-control", "s-maxage=x")],
            &[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")],
        ] {
            assert!(judged(mine).is_err(), "{mine:?} kept");
        }
        for everyone in [
            &[("cache-control", "public")][..],
            &[("cache-control", "public, max-age=600")],
            &[("cache-control", "s-maxage=60")],
        ] {
            assert_eq!(judged(everyone), Ok(true), "{everyone:?}");
        }
        for never in [
            &[("cache-control", "public, no-store")][..],
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "a=b"),
            ],
        ] {
            assert!(judged(never).is_err(), "{never:?} kept");
        }
    }

    #[test]
    fn stale_windows_and_stored_header() {
        let now = SystemTime::now();
        let meta = policy()
            .judge(&resp(200, &[("age", "5"), ("etag", "\"a\"")]), false, now)
            .unwrap();
        assert_eq!(meta.stale_while_revalidate_sec(), 60);
        assert_eq!(meta.stale_if_error_sec(), 24 * 3600);
        assert!(
            meta.headers().get("age").is_none(),
            "the upstream's Age is not replayed"
        );
        assert!(meta.headers().get("etag").is_some());
        let strict = policy()
            .judge(
                &resp(200, &[("cache-control", "max-age=10, must-revalidate")]),
                false,
                now,
            )
            .unwrap();
        assert_eq!(strict.stale_while_revalidate_sec(), 0);
        assert_eq!(strict.stale_if_error_sec(), 0);
    }
}
