//! Cheap coverage counting during a run, folded into [`Coverage`] at the end.

use crate::report::Coverage;

/// Coverage counts keyed by the address of their `&'static str` name, added
/// to [`Coverage`] (by name) when the run ends: the world counts several
/// times per step, and finding a name in the map (comparing strings) showed
/// in profiles. Where a name lands depends on its address, but the sums per
/// name do not.
pub(super) struct Counts {
    slots: Vec<Option<(&'static str, u64)>>,
    used: usize,
}

impl Counts {
    /// A power of two, far above the number of names counted.
    const SLOTS: usize = 256;

    /// Empty counts.
    pub(super) fn new() -> Self {
        Self {
            slots: vec![None; Self::SLOTS],
            used: 0,
        }
    }

    /// Adds one to `what` (in `cov` itself if the slots run out).
    pub(super) fn bump(&mut self, what: &'static str, cov: &mut Coverage) {
        let mask = Self::SLOTS - 1;
        let mut i = (what.as_ptr() as usize >> 3) & mask;
        loop {
            match &mut self.slots[i] {
                Some((name, n)) if std::ptr::eq(*name, what) => {
                    *n += 1;
                    return;
                }
                Some(_) => i = (i + 1) & mask,
                None if self.used < Self::SLOTS / 2 => {
                    self.slots[i] = Some((what, 1));
                    self.used += 1;
                    return;
                }
                // Unexpectedly many names: count in the map itself.
                None => {
                    *cov.entry(what).or_default() += 1;
                    return;
                }
            }
        }
    }

    /// Adds every count to `cov`, by name.
    pub(super) fn add_to(&self, cov: &mut Coverage) {
        for (name, n) in self.slots.iter().flatten() {
            *cov.entry(name).or_default() += n;
        }
    }
}
