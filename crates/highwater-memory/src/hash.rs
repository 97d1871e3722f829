//! A fast, deterministic hasher for byte-string keys.

use std::hash::{BuildHasher, Hasher};

/// Builds [`XxHasher`]s. Unseeded: the in-memory maps never leave the
/// process, and callers cannot choose keys adversarially more than they can
/// write state.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct XxBuild;

impl BuildHasher for XxBuild {
    type Hasher = XxHasher;

    fn build_hasher(&self) -> XxHasher {
        XxHasher(0)
    }
}

/// xxh3-64 over the bytes written; slice length prefixes are ignored because
/// the slice contents are hashed whole.
#[derive(Debug, Clone, Copy)]
pub(crate) struct XxHasher(u64);

impl Hasher for XxHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_usize(&mut self, _len: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}
