//! Maps and sets keyed by the library's own ids (chunk ids, task keys),
//! hashed with foldhash's fast, fixed-seed hasher: these keys come from the
//! library itself, never from an adversary, so no random seed is needed.

use std::collections::{HashMap, HashSet};

/// The hasher of [`IdMap`] and [`IdSet`].
pub(crate) type IdHasher = foldhash::fast::FixedState;

/// A map keyed by the library's own ids.
pub(crate) type IdMap<K, V> = HashMap<K, V, IdHasher>;

/// A set of the library's own ids.
pub(crate) type IdSet<K> = HashSet<K, IdHasher>;

/// A stable 64-bit hash (the same in every process built from the same
/// code), for fingerprints and routing keys.
pub(crate) fn stable_hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x6d75_6c74_696c_6f6f).hash_one(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn nearby_ids_spread_over_buckets_and_tags() {
        let build = IdHasher::default();
        let hashes: Vec<u64> = (0..4096u64)
            .map(|i| build.hash_one((7u64, i as u32)))
            .collect();
        // Low bits pick the bucket, the top 7 bits the tag: both must vary.
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        // A random function fills 1 - 1/e of them (about 2,590 of 4,096).
        assert!(buckets.len() > 2400, "{} distinct buckets", buckets.len());
        assert_eq!(tags.len(), 128);
    }
}
