//! Where a Finesse site's cached responses live: in memory, bounded by `max_size_mb`, with
//! least-recently-used eviction by pingora-cache's LRU manager (the proxy admits what is written
//! and purges what the manager evicts).
//!
//! Each stored response has a generation id, so that an eviction aimed at a response that has
//! since been replaced removes nothing; a replaced response leaves the LRU manager at once, so
//! its bytes stop counting against the bound. A body is kept as one `Bytes`: a hit hands out a
//! reference to it, never a copy. Entries remember their request path, for purges by prefix.

use crate::observe::admin::Purged;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::eviction::{lru, EvictionManager};
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheEntryId, CacheEntryKeyRef, CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// LRU shards. pingora's manager evicts from the tail of a shard picked at random, so with
/// several shards a recent entry alone in its shard can go first; the site's cache is one
/// process's and its lock is held for a list update only, so one shard keeps the order exact.
pub const SHARDS: usize = 1;

/// Bytes an entry is counted for beyond its body and header: its key, path, maps and lists.
const ENTRY_OVERHEAD: usize = 1024;
/// Bytes each header field is counted for beyond its name and value (map slots, case map).
const FIELD_OVERHEAD: usize = 64;
/// The largest body buffer allocated ahead of the body, on the upstream's word.
const PREALLOCATED_MAX: usize = 1 << 20;

/// What a stored response's metadata is made from again on every hit (pingora's `CacheMeta` is
/// not `Clone`).
#[derive(Clone)]
struct StoredMeta {
    fresh_until: SystemTime,
    created: SystemTime,
    epoch: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
}

impl StoredMeta {
    fn of(meta: &CacheMeta) -> Self {
        StoredMeta {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch: meta.epoch(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: compact(meta.response_header()),
        }
    }

    /// What the header is counted for in the cache's size.
    fn weight(&self) -> usize {
        self.header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
            .sum()
    }

    fn to_meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        meta.set_epoch_override(self.epoch);
        if let Some(v) = self.variance {
            meta.set_variance_key(v);
        }
        meta
    }
}

/// A copy of `header` in allocations of its own. An upstream's header is parsed in place: its
/// values are slices of the buffer it was read into (4 KiB at least), which a stored clone would
/// keep alive for as long as the entry lives, uncounted.
fn compact(header: &ResponseHeader) -> ResponseHeader {
    copied(header).unwrap_or_else(|| header.clone())
}

/// `header` rebuilt field by field, names in the case the upstream wrote them.
fn copied(header: &ResponseHeader) -> Option<ResponseHeader> {
    let mut copy = ResponseHeader::build(header.status, Some(header.headers.len())).ok()?;
    copy.set_version(header.version);
    let value = |v: &http::HeaderValue| http::HeaderValue::from_bytes(v.as_bytes()).ok();
    if header.has_case() {
        for (name, v) in header.case_header_iter() {
            let name = String::from_utf8(name.as_slice().to_vec()).ok()?;
            copy.append_header(name, value(v)?).ok()?;
        }
    } else {
        for (name, v) in &header.headers {
            copy.append_header(name.clone(), value(v)?).ok()?;
        }
    }
    if let Some(phrase) = header.get_reason_phrase() {
        copy.set_reason_phrase(Some(phrase)).ok()?;
    }
    Some(copy)
}

/// A stored response's header framed by the length of the body stored with it. A body that was
/// rewritten on its way in (substitution) arrived without a length and went to its first client
/// chunked; hits know the length and send it: the client learns the size, and the body goes out
/// without chunk framing (one write fewer per hit).
fn with_length(mut header: ResponseHeader, length: usize) -> ResponseHeader {
    header.remove_header(&http::header::TRANSFER_ENCODING);
    header
        .insert_header(http::header::CONTENT_LENGTH, length)
        .expect("a number is a header value");
    header
}

struct Object {
    id: u64,
    key: CompactCacheKey,
    /// The request path the response was stored for (purges by prefix).
    path: Box<str>,
    meta: StoredMeta,
    body: Bytes,
    weight: usize,
}

impl Object {
    fn entry(&self) -> CacheEntryKeyRef<'_> {
        CacheEntryKeyRef::Identified {
            key: &self.key,
            id: CacheEntryId::new(self.id),
        }
    }
}

pub struct MemStore {
    objects: RwLock<HashMap<HashBinary, Arc<Object>>>,
    eviction: &'static lru::Manager<SHARDS>,
    /// The largest body stored; a longer one is served but not kept.
    max_body: usize,
    next_id: AtomicU64,
    bytes: AtomicUsize,
}

impl MemStore {
    pub fn new(eviction: &'static lru::Manager<SHARDS>, max_body: usize) -> Self {
        MemStore {
            objects: RwLock::new(HashMap::new()),
            eviction,
            max_body,
            next_id: AtomicU64::new(1),
            bytes: AtomicUsize::new(0),
        }
    }

    /// Entries and the bytes they are counted for.
    pub fn size(&self) -> (usize, usize) {
        let entries = self.read().len();
        (entries, self.bytes.load(Ordering::Relaxed))
    }

    /// Removes every entry whose request path starts with `prefix` (all of them without one).
    pub fn purge_prefix(&self, prefix: Option<&str>) -> Purged {
        let mut purged = Purged::default();
        let mut objects = self.write();
        objects.retain(|_, o| {
            if prefix.is_some_and(|p| !o.path.starts_with(p)) {
                return true;
            }
            self.eviction.remove(o.entry());
            self.bytes.fetch_sub(o.weight, Ordering::Relaxed);
            purged.entries += 1;
            purged.bytes += o.weight;
            false
        });
        purged
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<HashBinary, Arc<Object>>> {
        self.objects.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<HashBinary, Arc<Object>>> {
        self.objects.write().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, object: Object) {
        self.bytes.fetch_add(object.weight, Ordering::Relaxed);
        let replaced = self
            .write()
            .insert(object.key.combined_bin(), Arc::new(object));
        if let Some(old) = replaced {
            self.eviction.remove(old.entry());
            self.bytes.fetch_sub(old.weight, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl Storage for MemStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> pingora::Result<Option<(CacheMeta, HitHandler)>> {
        let Some(object) = self.read().get(&key.combined_bin()).cloned() else {
            return Ok(None);
        };
        let meta = object.meta.to_meta();
        let hit = Hit {
            body: Some(object.body.clone()),
            whole: object.body.clone(),
            id: object.id,
            weight: object.weight,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> pingora::Result<MissHandler> {
        let path = key.extensions.get::<RequestPath>().map_or("", |p| &p.0);
        // A body of announced length is read into a buffer of its size (a rewritten one has
        // none), up to 1 MiB: past that the announcement is not taken on trust.
        let length = meta
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        Ok(Box::new(Miss {
            store: self,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key: key.to_compact(),
            path: path.into(),
            meta: StoredMeta::of(meta),
            body: BytesMut::with_capacity(length.min(self.max_body).min(PREALLOCATED_MAX)),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> pingora::Result<PurgeOutcome> {
        let combined = target.key().combined_bin();
        let mut objects = self.write();
        let matches = match (objects.get(&combined), target) {
            (None, _) => false,
            (Some(_), PurgeTarget::Active(_)) => true,
            (Some(o), PurgeTarget::Exact(entry)) => {
                entry.entry_id() == Some(CacheEntryId::new(o.id))
            }
        };
        if !matches {
            return Ok(PurgeOutcome::NotFound);
        }
        let object = objects.remove(&combined).expect("checked above");
        drop(objects);
        self.bytes.fetch_sub(object.weight, Ordering::Relaxed);
        Ok(PurgeOutcome::Purged(Some(CacheEntryId::new(object.id))))
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> pingora::Result<bool> {
        let mut objects = self.write();
        let Some(current) = objects.get_mut(&key.combined_bin()) else {
            return Ok(false);
        };
        let mut meta = StoredMeta::of(meta);
        meta.header = with_length(meta.header, current.body.len());
        let updated = Object {
            id: current.id,
            key: current.key.clone(),
            path: current.path.clone(),
            meta,
            body: current.body.clone(),
            weight: current.weight,
        };
        *current = Arc::new(updated);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// The request path a cache key was made for, carried in the key's extensions to the store.
#[derive(Clone)]
pub struct RequestPath(pub Box<str>);

/// The most a hit hands out at once: the client's write timeout bounds each piece written to it
/// (`limits.client_send_timeout_ms`), so a large body goes out in pieces a slow but steady reader
/// takes in time, as a proxied body does.
const HIT_PIECE: usize = 64 * 1024;

struct Hit {
    /// What `read_body` hands out next, in pieces of at most `HIT_PIECE`.
    body: Option<Bytes>,
    whole: Bytes,
    id: u64,
    weight: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> pingora::Result<Option<Bytes>> {
        match self.body.as_mut() {
            Some(rest) if rest.len() > HIT_PIECE => Ok(Some(rest.split_to(HIT_PIECE))),
            _ => Ok(self.body.take()),
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> pingora::Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> pingora::Result<()> {
        if start >= self.whole.len() {
            return pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                format!(
                    "range start {start} is past the body's {} bytes",
                    self.whole.len()
                ),
            );
        }
        let end = end.map_or(self.whole.len(), |e| e.min(self.whole.len()));
        self.body = Some(self.whole.slice(start..end));
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    store: &'static MemStore,
    id: u64,
    key: CompactCacheKey,
    path: Box<str>,
    meta: StoredMeta,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> pingora::Result<()> {
        if self.body.len() + data.len() > self.store.max_body {
            return pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                format!("body longer than {} bytes: not cached", self.store.max_body),
            );
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> pingora::Result<MissFinishType> {
        let mut meta = self.meta;
        meta.header = with_length(meta.header, self.body.len());
        let weight = self.body.len() + meta.weight() + ENTRY_OVERHEAD;
        // A buffer that grew by doubling (a body of unknown length) is copied to its length.
        let body = if self.body.capacity() > self.body.len() + self.body.len() / 8 {
            Bytes::copy_from_slice(&self.body)
        } else {
            self.body.freeze()
        };
        self.store.insert(Object {
            id: self.id,
            key: self.key,
            path: self.path,
            meta,
            body,
            weight,
        });
        Ok(MissFinishType::Created(weight))
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;
    use pingora::cache::CacheEntryKey;
    use std::time::Duration;

    /// The entry an eviction names.
    fn identified(key: &CacheKey, id: u64) -> CacheEntryKey {
        CacheEntryKey::from_entry_id(key.to_compact(), Some(CacheEntryId::new(id)))
    }

    fn store(limit: usize) -> &'static MemStore {
        let eviction = Box::leak(Box::new(lru::Manager::<SHARDS>::with_capacity(limit, 64)));
        Box::leak(Box::new(MemStore::new(eviction, 1 << 20)))
    }

    fn meta() -> CacheMeta {
        let now = SystemTime::now();
        let header = ResponseHeader::build(200, None).unwrap();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    fn key(path: &str) -> CacheKey {
        let mut key = CacheKey::new(format!("up\nhost\n{path}"), "");
        key.extensions.insert(RequestPath(path.into()));
        key
    }

    async fn put(store: &'static MemStore, path: &str, body: &'static [u8]) -> u64 {
        let trace = Span::inactive().handle();
        let mut miss = store
            .get_miss_handler(&key(path), &meta(), &trace)
            .await
            .unwrap();
        let id = miss.entry_id().unwrap().get();
        miss.write_body(Bytes::from_static(body), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        id
    }

    async fn body(store: &'static MemStore, path: &str) -> Option<Bytes> {
        let (_, mut hit) = store
            .lookup(&key(path), &Span::inactive().handle())
            .await
            .unwrap()?;
        hit.read_body().await.unwrap()
    }

    #[tokio::test]
    async fn stores_serves_and_seeks() {
        let s = store(1 << 20);
        put(s, "/desktop/a.js", b"hello world").await;
        assert_eq!(body(s, "/desktop/a.js").await.unwrap(), "hello world");
        assert!(body(s, "/desktop/b.js").await.is_none());
        let (_, mut hit) = s
            .lookup(&key("/desktop/a.js"), &Span::inactive().handle())
            .await
            .unwrap()
            .unwrap();
        hit.seek(6, Some(11)).unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "world");
        let header = "content-length".len() + "11".len() + FIELD_OVERHEAD;
        assert_eq!(s.size(), (1, 11 + header + ENTRY_OVERHEAD));
    }

    #[test]
    fn a_stored_header_keeps_nothing_of_the_buffer_it_was_read_into() {
        // As an upstream's header is parsed: values are slices of the read buffer.
        let buffer = Bytes::from(vec![b'v'; 4096]);
        let mut header = ResponseHeader::build(200, None).unwrap();
        let value = http::HeaderValue::from_maybe_shared(buffer.slice(10..20)).unwrap();
        header.insert_header("X-Upstream", value).unwrap();
        let now = SystemTime::now();
        let meta = CacheMeta::new(now, now, 0, 0, header);
        let stored = StoredMeta::of(&meta);
        let kept = stored.header.headers["x-upstream"].as_bytes();
        assert_eq!(kept, b"vvvvvvvvvv");
        let names: Vec<&[u8]> = stored
            .header
            .case_header_iter()
            .map(|(n, _)| n.as_slice())
            .collect();
        assert_eq!(names, [&b"X-Upstream"[..]], "the upstream's case is kept");
        let inside = buffer.as_ptr_range().contains(&kept.as_ptr());
        assert!(!inside, "the stored header points into the read buffer");
    }

    #[tokio::test]
    async fn a_large_body_is_served_in_pieces() {
        static BIG: [u8; 150_000] = [b'x'; 150_000];
        let s = store(1 << 20);
        put(s, "/desktop/big.js", &BIG).await;
        let (_, mut hit) = s
            .lookup(&key("/desktop/big.js"), &Span::inactive().handle())
            .await
            .unwrap()
            .unwrap();
        let mut pieces = Vec::new();
        while let Some(piece) = hit.read_body().await.unwrap() {
            pieces.push(piece.len());
        }
        assert_eq!(pieces, [HIT_PIECE, HIT_PIECE, 150_000 - 2 * HIT_PIECE]);
    }

    #[tokio::test]
    async fn an_eviction_of_a_replaced_generation_removes_nothing() {
        let s = store(1 << 20);
        let old = put(s, "/x.js", b"old").await;
        let new = put(s, "/x.js", b"new").await;
        let trace = Span::inactive().handle();
        let stale = identified(&key("/x.js"), old);
        let outcome = s
            .purge(PurgeTarget::Exact(&stale), PurgeType::Eviction, &trace)
            .await;
        assert!(matches!(outcome, Ok(PurgeOutcome::NotFound)));
        assert_eq!(body(s, "/x.js").await.unwrap(), "new");
        let current = identified(&key("/x.js"), new);
        let outcome = s
            .purge(PurgeTarget::Exact(&current), PurgeType::Eviction, &trace)
            .await;
        assert!(matches!(outcome, Ok(PurgeOutcome::Purged(_))));
        assert_eq!(s.size(), (0, 0));
    }

    #[tokio::test]
    async fn update_meta_of_a_missing_entry_is_false_not_a_panic() {
        let s = store(1 << 20);
        let trace = Span::inactive().handle();
        assert!(!s.update_meta(&key("/gone"), &meta(), &trace).await.unwrap());
        put(s, "/here", b"x").await;
        assert!(s.update_meta(&key("/here"), &meta(), &trace).await.unwrap());
        assert_eq!(body(s, "/here").await.unwrap(), "x");
    }

    #[tokio::test]
    async fn purge_by_prefix() {
        let s = store(1 << 20);
        put(s, "/desktop/a.js", b"a").await;
        put(s, "/desktop/b.css", b"b").await;
        put(s, "/cuic/c.js", b"c").await;
        let purged = s.purge_prefix(Some("/desktop/"));
        assert_eq!(purged.entries, 2);
        assert!(body(s, "/desktop/a.js").await.is_none());
        assert!(body(s, "/cuic/c.js").await.is_some());
        assert_eq!(s.purge_prefix(None).entries, 1);
        assert_eq!(s.size(), (0, 0));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let eviction = Box::leak(Box::new(lru::Manager::<SHARDS>::with_capacity(1 << 20, 64)));
        let s: &'static MemStore = Box::leak(Box::new(MemStore::new(eviction, 4)));
        let trace = Span::inactive().handle();
        let mut miss = s
            .get_miss_handler(&key("/big"), &meta(), &trace)
            .await
            .unwrap();
        assert!(miss
            .write_body(Bytes::from_static(b"12345"), true)
            .await
            .is_err());
    }
}
