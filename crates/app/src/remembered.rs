//! A small bounded map of answers that stay true for their key: git facts
//! of two commits, a gate at one audit sequence number and target tip.
//! When full it forgets everything and starts again, which keeps it simple
//! and its memory bounded; a forgotten answer is only computed again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Up to `capacity` answers by key.
pub struct Remembered<K, V> {
    capacity: usize,
    answers: Mutex<HashMap<K, Arc<V>>>,
}

impl<K: Eq + Hash, V> Remembered<K, V> {
    /// An empty memory of at most `capacity` answers.
    pub fn new(capacity: usize) -> Self {
        Remembered { capacity, answers: Mutex::new(HashMap::new()) }
    }

    /// The answer remembered for `key`.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Remembers `value` for `key`, forgetting everything first when full.
    pub fn put(&self, key: K, value: Arc<V>) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= self.capacity {
            answers.clear();
        }
        answers.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_memory_forgets_and_stays_within_its_capacity() {
        let memory = Remembered::new(2);
        memory.put(1, Arc::new("one"));
        memory.put(2, Arc::new("two"));
        assert_eq!(memory.get(&1).as_deref(), Some(&"one"));
        memory.put(3, Arc::new("three"));
        assert_eq!(memory.get(&1), None);
        assert_eq!(memory.get(&3).as_deref(), Some(&"three"));
    }
}
