//! Decoded objects kept for reuse, least recently used dropped first past a byte budget: the
//! base chunks that WAL chunks stored as patches against pages of them name
//! ([`crate::pg`], [`crate::delta`] format 4) recur from one WAL chunk to the next.

use std::collections::HashMap;
use std::sync::Arc;

use super::ObjectId;

/// Objects' contents by name, at most `budget` bytes of them.
pub(crate) struct ChunkCache {
    map: HashMap<ObjectId, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    tick: u64,
    budget: usize,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("objects", &self.map.len())
            .field("bytes", &self.bytes)
            .field("budget", &self.budget)
            .finish()
    }
}

impl ChunkCache {
    pub(crate) fn new(budget: usize) -> ChunkCache {
        ChunkCache {
            map: HashMap::new(),
            bytes: 0,
            tick: 0,
            budget,
        }
    }

    /// The content of `id` if it is kept (and now the most recently used).
    pub(crate) fn get(&mut self, id: &ObjectId) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let (b, t) = self.map.get_mut(id)?;
        *t = self.tick;
        Some(b.clone())
    }

    /// Keeps `content` as `id`'s, dropping the least recently used past the budget.
    pub(crate) fn insert(&mut self, id: ObjectId, content: Arc<Vec<u8>>) {
        self.tick += 1;
        self.bytes += content.len();
        if let Some((old, _)) = self.map.insert(id, (content, self.tick)) {
            self.bytes -= old.len();
        }
        while self.bytes > self.budget {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some((v, _)) = self.map.remove(&oldest) {
                self.bytes -= v.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_goes_first_past_the_budget() {
        let id = |n: u8| ObjectId([n; 32]);
        let mut c = ChunkCache::new(30);
        c.insert(id(1), Arc::new(vec![0; 10]));
        c.insert(id(2), Arc::new(vec![0; 10]));
        c.insert(id(3), Arc::new(vec![0; 10]));
        assert!(c.get(&id(1)).is_some());
        c.insert(id(4), Arc::new(vec![0; 10]));
        assert!(c.get(&id(2)).is_none(), "the least recently used");
        assert!(c.get(&id(1)).is_some() && c.get(&id(3)).is_some() && c.get(&id(4)).is_some());
        // Kept again under the same name: counted once.
        c.insert(id(4), Arc::new(vec![0; 10]));
        assert!(c.get(&id(1)).is_some() && c.get(&id(3)).is_some());
    }
}
