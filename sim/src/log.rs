//! The event log: every step of a run is hashed (so two runs of one seed can
//! be compared bit for bit) and the last few are kept as text for failure
//! reports.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::time::SimTime;

/// A word-wise FNV-1a variant: tiny, stable across platforms and Rust
/// versions (unlike `DefaultHasher`), which is what a reproducibility hash
/// needs.
#[derive(Debug, Clone)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0_u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        for b in chunks.remainder() {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // FNV-1a over whole words: the same stable recipe, eight times fewer
        // multiplications.
        self.0 ^= n;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        self.0 ^= self.0 >> 29;
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// One log entry. `a` and `b` are two numbers whose meaning depends on
/// `kind` (command id, term, pid, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Entry {
    pub(crate) at: SimTime,
    /// Node index, or `u32::MAX` for the world / database.
    pub(crate) node: u32,
    pub(crate) kind: &'static str,
    /// Role index, or `u32::MAX` when not about one role.
    pub(crate) role: u32,
    pub(crate) a: u64,
    pub(crate) b: u64,
}

pub(crate) const NONE: u32 = u32::MAX;

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.at)?;
        if self.node == NONE {
            write!(f, "world ")?;
        } else {
            write!(f, "n{:<4}", self.node)?;
        }
        write!(f, "{:<24}", self.kind)?;
        if self.role != NONE {
            write!(f, " r{}", self.role)?;
        }
        write!(f, " {} {}", self.a, self.b)
    }
}

/// The hash of every entry, the last `keep` entries, and optionally all of
/// them as text.
#[derive(Debug, Clone)]
pub(crate) struct Log {
    hash: Fnv,
    count: u64,
    tail: VecDeque<Entry>,
    keep: usize,
    trace: Option<Vec<String>>,
}

impl Log {
    pub(crate) fn new(keep: usize, trace: bool) -> Self {
        Self {
            hash: Fnv::default(),
            count: 0,
            tail: VecDeque::with_capacity(keep),
            keep,
            trace: trace.then(Vec::new),
        }
    }

    pub(crate) fn push(&mut self, entry: Entry) {
        entry.hash(&mut self.hash);
        self.count += 1;
        if let Some(t) = &mut self.trace {
            t.push(entry.to_string());
        }
        if self.keep > 0 {
            if self.tail.len() == self.keep {
                self.tail.pop_front();
            }
            self.tail.push_back(entry);
        }
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash.finish()
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn tail_text(&self) -> Vec<String> {
        self.tail.iter().map(ToString::to_string).collect()
    }

    pub(crate) fn take_trace(&mut self) -> Option<Vec<String>> {
        self.trace.take()
    }
}
