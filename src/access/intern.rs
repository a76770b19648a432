//! A bounded, lock-free set that gives each key a stable index: the label space of the
//! per-resource metrics and the rules `--record-rbac` has seen.
//!
//! The request path looks a key up with atomic loads only (open addressing over
//! `OnceLock` slots); a key seen for the first time is inserted into an empty slot, the
//! only moment two racing requests may wait on each other (a `OnceLock` initialisation,
//! per slot, never a table-wide lock). Keys are never removed, so an index stays valid
//! for the life of the process, and at most `bound` keys are ever held.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) struct Interner<K> {
    slots: Box<[OnceLock<K>]>,
    len: AtomicUsize,
    bound: usize,
}

impl<K> std::fmt::Debug for Interner<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner")
            .field("len", &self.len())
            .field("bound", &self.bound)
            .finish()
    }
}

impl<K> Interner<K> {
    /// Room for `bound` keys, in a table twice as large so that probes stay short.
    pub(crate) fn new(bound: usize) -> Self {
        let capacity = (bound.max(1) * 2).next_power_of_two();
        Interner {
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            bound,
        }
    }

    /// How many indices there can be (all below this).
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed).min(self.bound)
    }

    /// The index of the key `eq` recognises, inserting `make()` if it is new; `None` when
    /// it is new and `bound` keys are already held. `hash` must be the same for equal
    /// keys.
    pub(crate) fn index(
        &self,
        hash: u64,
        eq: impl Fn(&K) -> bool,
        make: impl Fn() -> K,
    ) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut i = (hash as usize) & mask;
        for _ in 0..self.slots.len() {
            let slot = &self.slots[i];
            match slot.get() {
                Some(k) if eq(k) => return Some(i),
                Some(_) => {}
                None => {
                    if self.len.fetch_add(1, Ordering::Relaxed) >= self.bound {
                        self.len.fetch_sub(1, Ordering::Relaxed);
                        return None;
                    }
                    let mut mine = false;
                    let k = slot.get_or_init(|| {
                        mine = true;
                        make()
                    });
                    if !mine {
                        // Another request filled this slot first.
                        self.len.fetch_sub(1, Ordering::Relaxed);
                    }
                    if eq(k) {
                        return Some(i);
                    }
                }
            }
            i = (i + 1) & mask;
        }
        None
    }

    pub(crate) fn get(&self, index: usize) -> Option<&K> {
        self.slots.get(index)?.get()
    }

    /// The keys held, with their indices, in table order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &K)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.get().map(|k| (i, k)))
    }
}

/// FNV-1a over the parts, each followed by a separator byte no part holds (`\0`).
pub(crate) fn hash_parts(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.as_bytes().iter().chain(&[0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_stable_and_bounded() {
        let t: Interner<String> = Interner::new(3);
        let idx = |s: &str| t.index(hash_parts(&[s]), |k| k == s, || s.to_owned());
        let a = idx("a").unwrap();
        let b = idx("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(idx("a"), Some(a));
        assert!(idx("c").is_some());
        assert_eq!(idx("d"), None, "over the bound");
        assert_eq!(idx("b"), Some(b), "old keys still found");
        assert_eq!(t.len(), 3);
        let mut keys: Vec<&String> = t.iter().map(|(_, k)| k).collect();
        keys.sort();
        assert_eq!(keys, ["a", "b", "c"]);
        // Every key hashing to the same slot still gets its own.
        let same: Interner<u32> = Interner::new(4);
        let got: Vec<_> = (1..=4)
            .map(|n| same.index(7, |k| *k == n, || n).unwrap())
            .collect();
        let mut dedup = got.clone();
        dedup.dedup();
        assert_eq!(got, dedup);
        assert_eq!(same.get(got[2]), Some(&3));
    }
}
