//! The workload generator shared by the native and RESP drivers: which key each increment
//! touches and by how much, so both protocols face exactly the same stream.
//!
//! Keys are `key:<rank>` with `rank` in `0..key_count`, drawn uniformly or from a Zipf
//! distribution (rank 0 the hottest), with a seed per connection so runs repeat.
//! Zipf sampling uses rejection-inversion (Hörmann and Derflinger, "Rejection-inversion to
//! generate variates from monotone discrete distributions", 1996): O(1) time and memory
//! per draw for any key count, where a cumulative table for 10 million keys would take
//! 80 MB. Invariant: every drawn rank is `< key_count`.

/// The longest key this generator writes: `key:` and up to 20 digits.
pub const KEY_BYTES_MAX: usize = 4 + 20;

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Key of rank `k` (from 1) has probability proportional to `1 / k^exponent`.
    Zipfian { exponent: f64 },
}

/// A small, fast, seedable generator (SplitMix64): good enough to pick keys, and
/// deterministic for a given seed.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose stream depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits fill a double's mantissa exactly.
        (self.next_u64() >> 11) as f64 * (1.0 / (1_u64 << 53) as f64)
    }

    /// A uniform integer in `0..bound` (`bound > 0`), by Lemire's multiply-shift.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// Zipf sampler by rejection-inversion over ranks `1..=n`.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s: f64,
}

impl Zipf {
    /// A sampler over `1..=n` with the given exponent (`n >= 1`, `exponent > 0`).
    pub fn new(n: u64, exponent: f64) -> Self {
        assert!(n >= 1, "Zipf needs at least one key");
        assert!(exponent > 0.0, "Zipf exponent must be positive");
        let n = n as f64;
        let h_integral_x1 = h_integral(1.5, exponent) - 1.0;
        let h_integral_n = h_integral(n + 0.5, exponent);
        let s = 2.0 - h_integral_inverse(h_integral(2.5, exponent) - h(2.0, exponent), exponent);
        Zipf {
            n,
            exponent,
            h_integral_x1,
            h_integral_n,
            s,
        }
    }

    /// A rank in `1..=n`.
    pub fn sample(&self, random: &mut SplitMix64) -> u64 {
        loop {
            let u =
                self.h_integral_n + random.next_f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = h_integral_inverse(u, self.exponent);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.s || u >= h_integral(k + 0.5, self.exponent) - h(k, self.exponent) {
                return k as u64;
            }
        }
    }
}

/// `h(x) = 1 / x^exponent`, the unnormalized probability of rank `x`.
fn h(x: f64, exponent: f64) -> f64 {
    (-exponent * x.ln()).exp()
}

/// The integral of `h`: `(x^(1-e) - 1) / (1 - e)`, or `ln x` when `e == 1`.
fn h_integral(x: f64, exponent: f64) -> f64 {
    let log_x = x.ln();
    helper2((1.0 - exponent) * log_x) * log_x
}

fn h_integral_inverse(x: f64, exponent: f64) -> f64 {
    let t = (x * (1.0 - exponent)).max(-1.0);
    (helper1(t) * x).exp()
}

/// `ln(1 + x) / x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

/// Draws the key ranks of one connection.
#[derive(Clone, Debug)]
pub struct KeyChooser {
    random: SplitMix64,
    key_count: u64,
    zipf: Option<Zipf>,
}

impl KeyChooser {
    /// A chooser over `key_count` keys (at least 1), seeded with `seed`.
    pub fn new(distribution: Distribution, key_count: u64, seed: u64) -> Self {
        assert!(key_count >= 1, "the workload needs at least one key");
        let zipf = match distribution {
            Distribution::Uniform => None,
            Distribution::Zipfian { exponent } => Some(Zipf::new(key_count, exponent)),
        };
        KeyChooser {
            random: SplitMix64::new(seed),
            key_count,
            zipf,
        }
    }

    /// The next rank, in `0..key_count`.
    pub fn next_rank(&mut self) -> u64 {
        let rank = match &self.zipf {
            None => self.random.below(self.key_count),
            Some(zipf) => zipf.sample(&mut self.random) - 1,
        };
        debug_assert!(rank < self.key_count);
        rank
    }
}

/// Replace `out` with the name of the key of `rank`: `key:<rank>`.
/// Formats the digits without `core::fmt` (the RESP crate's integer writer): `write!`
/// costs the load generator more than the server spends on the increment, and the
/// generator shares the server's CPUs.
pub fn write_key(out: &mut Vec<u8>, rank: u64) {
    out.clear();
    out.extend_from_slice(b"key:");
    tally_resp::number::push_usize(
        out,
        usize::try_from(rank).expect("Tally builds for 64-bit targets"),
    );
    debug_assert!(out.len() <= KEY_BYTES_MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_ranks_stay_in_range_and_cover_the_keys() {
        let mut chooser = KeyChooser::new(Distribution::Uniform, 10, 1);
        let mut seen = [0_u32; 10];
        for _ in 0..10_000 {
            seen[chooser.next_rank() as usize] += 1;
        }
        // Each key expects 1,000 draws; 700 is over 9 standard deviations below.
        assert!(seen.iter().all(|&count| count > 700), "{seen:?}");
    }

    #[test]
    fn zipf_frequencies_follow_the_power_law() {
        let key_count = 1_000;
        let exponent = 0.99;
        let mut chooser = KeyChooser::new(Distribution::Zipfian { exponent }, key_count, 7);
        let draws = 200_000;
        let mut seen = vec![0_u32; key_count as usize];
        for _ in 0..draws {
            seen[chooser.next_rank() as usize] += 1;
        }
        let normalizer: f64 = (1..=key_count).map(|k| h(k as f64, exponent)).sum();
        for rank in [1_u64, 2, 10, 100] {
            let expected = f64::from(draws) * h(rank as f64, exponent) / normalizer;
            let observed = f64::from(seen[(rank - 1) as usize]);
            // Within 5 standard deviations of a binomial count.
            let tolerance = 5.0 * expected.sqrt() + 1.0;
            assert!(
                (observed - expected).abs() < tolerance,
                "rank {rank}: observed {observed}, expected {expected:.0}"
            );
        }
    }

    #[test]
    fn zipf_over_one_key_always_draws_it() {
        let mut chooser = KeyChooser::new(Distribution::Zipfian { exponent: 1.0 }, 1, 3);
        assert!((0..100).all(|_| chooser.next_rank() == 0));
    }

    #[test]
    fn same_seed_same_stream() {
        let mut a = KeyChooser::new(Distribution::Zipfian { exponent: 1.2 }, 1 << 30, 42);
        let mut b = KeyChooser::new(Distribution::Zipfian { exponent: 1.2 }, 1 << 30, 42);
        assert!((0..1_000).all(|_| a.next_rank() == b.next_rank()));
    }

    #[test]
    fn keys_are_named_by_rank() {
        let mut key = Vec::new();
        write_key(&mut key, 123);
        assert_eq!(key, b"key:123");
        write_key(&mut key, u64::MAX);
        assert_eq!(key.len(), KEY_BYTES_MAX);
        for rank in [0, 7, 10, 99, 1_000_000, u64::MAX / 3] {
            write_key(&mut key, rank);
            assert_eq!(key, format!("key:{rank}").as_bytes());
        }
    }
}
