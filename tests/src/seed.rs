//! Seeds for randomised tests: taken from `CASEMENT_SEED` or drawn at random, printed, and
//! printed again with a replay command when the test fails.
//!
//! ```
//! let seed = casement_tests::seed::Seed::from_env_or_random();
//! let _replay = seed.replay_hint("integration", "mqtt_garbage");
//! let mut rng = seed.rng("mqtt");
//! # let _ = rand::Rng::random::<u8>(&mut rng);
//! ```

use std::fmt;

use rand::SeedableRng;
use rand::rngs::StdRng;

/// The environment variable that fixes the seed of a run.
pub const SEED_ENV: &str = "CASEMENT_SEED";

/// One run's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(u64);

impl Seed {
    /// A fixed seed.
    pub fn new(value: u64) -> Self {
        Self(value)
    }

    /// `CASEMENT_SEED` when set (decimal or `0x` hex), otherwise a random seed. Either way the
    /// seed is printed to stderr (which the test harness shows for failing tests).
    ///
    /// # Panics
    /// When `CASEMENT_SEED` is set but is not a number: a replay with a silently different
    /// seed would be worse than no replay.
    pub fn from_env_or_random() -> Self {
        let seed = match std::env::var(SEED_ENV) {
            Ok(text) => match parse_seed(&text) {
                Some(value) => Self(value),
                None => panic!("{SEED_ENV}={text:?} is not a number (decimal or 0x hex)"),
            },
            Err(_) => Self(rand::random()),
        };
        eprintln!("{SEED_ENV}={}", seed.0);
        seed
    }

    /// The value.
    pub fn value(self) -> u64 {
        self.0
    }

    /// An independent random stream for one purpose: the same seed and `stream` name always
    /// give the same numbers, and adding a stream does not shift the others.
    pub fn rng(self, stream: &str) -> StdRng {
        StdRng::seed_from_u64(mix(self.0, stream))
    }

    /// A guard that prints how to replay this run when it is dropped during a panic (a failed
    /// assertion): `CASEMENT_SEED=… cargo test -p casement-tests --test <binary> <test>`.
    pub fn replay_hint(self, test_binary: &str, test_name: &str) -> ReplayHint {
        ReplayHint {
            seed: self,
            command: format!("cargo test -p casement-tests --test {test_binary} -- {test_name}"),
        }
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// FNV-1a over the stream name, folded into the seed with SplitMix64's finaliser.
fn mix(seed: u64, stream: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stream.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Prints the replay command if the test panics while this is alive.
#[derive(Debug)]
pub struct ReplayHint {
    seed: Seed,
    command: String,
}

impl Drop for ReplayHint {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\nthis run used {SEED_ENV}={}; replay it with:\n    {SEED_ENV}={} {}\n",
                self.seed, self.seed, self.command
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let seed = Seed::new(42);
        let a: Vec<u32> = (0..4).map(|_| seed.rng("a").random()).collect();
        let a_again: Vec<u32> = (0..4).map(|_| seed.rng("a").random()).collect();
        assert_eq!(a, a_again);
        let mut a = seed.rng("a");
        let mut b = seed.rng("b");
        let xs: Vec<u64> = (0..4).map(|_| a.random()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.random()).collect();
        assert_ne!(xs, ys);
        let mut other = Seed::new(43).rng("a");
        let zs: Vec<u64> = (0..4).map(|_| other.random()).collect();
        assert_ne!(xs, zs);
    }

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("12345"), Some(12345));
        assert_eq!(parse_seed(" 0xff "), Some(255));
        assert_eq!(parse_seed("0XFF"), Some(255));
        assert_eq!(parse_seed("twelve"), None);
        assert_eq!(parse_seed(""), None);
    }
}
