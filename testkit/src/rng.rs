//! A small deterministic generator (SplitMix64) for soaks and randomised tests: a
//! failing run is re-run from the seed it printed.

use std::time::Duration;

/// SplitMix64 over its state (the seed to start with).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Seconds, uniform in `lo..=hi` in tenths.
    pub fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        let tenths = self.range((lo * 10.0) as u64, (hi * 10.0) as u64);
        Duration::from_millis(tenths * 100)
    }
}
