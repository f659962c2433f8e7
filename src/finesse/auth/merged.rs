//! One judgement per key at a time: a request asking about a key already being judged waits for
//! that judgement and shares its result, so that a burst of identical requests costs one call.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Judgements in progress, by key.
pub struct Merged<K, V> {
    pending: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Hash + Eq + Copy, V: Clone> Merged<K, V> {
    pub fn new() -> Self {
        Merged {
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// What `judge` finds about `key`, shared with whoever asks about `key` meanwhile; and
    /// whether this call ran it.
    pub async fn once<F, Fut>(&self, key: K, judge: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.entry(key).or_default().clone()
        };
        let waiting = Waiting {
            merged: self,
            key,
            cell: Some(cell),
        };
        let mut ran = false;
        let value = waiting
            .cell()
            .get_or_init(|| {
                ran = true;
                judge()
            })
            .await
            .clone();
        (value, ran)
    }

    /// Judgements in progress.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.lock().unwrap().len()
    }
}

/// One request's interest in a judgement: the last one out removes it, whether the judgement
/// finished or every request waiting for it went away.
struct Waiting<'a, K: Hash + Eq, V> {
    merged: &'a Merged<K, V>,
    key: K,
    /// Taken (and so released) under the map's lock, so that the reference count read there is
    /// exact.
    cell: Option<Arc<OnceCell<V>>>,
}

impl<K: Hash + Eq, V> Waiting<'_, K, V> {
    fn cell(&self) -> &OnceCell<V> {
        self.cell.as_ref().expect("held until dropped")
    }
}

impl<K: Hash + Eq, V> Drop for Waiting<'_, K, V> {
    fn drop(&mut self) {
        let mut pending = self
            .merged
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let cell = self.cell.take().expect("held until dropped");
        let ours = pending
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &cell));
        // The map holds one reference and this request another: nobody else is waiting.
        if ours && (cell.initialized() || Arc::strong_count(&cell) <= 2) {
            pending.remove(&self.key);
        }
        drop(cell);
    }
}
