//! Host-test support shared by the property tests: one way to run `proptest` that is the same
//! on every run, so that a failure seen once is seen again (and a passing run proves the same
//! cases every time).

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseResult, TestRng, TestRunner};

/// The seed of every property test's ChaCha generator.
const SEED: [u8; 32] = *b"pvagent guest property tests v1.";

/// A runner of `cases` cases drawn from the fixed seed: no failure files (a failure's minimal
/// input is in the test's output, and its fixed seed finds it again), no forking, a bound on
/// shrinking. The environment's `PROPTEST_*` settings are overridden, so that the test
/// command's run is the same wherever it runs.
pub fn runner(cases: u32) -> TestRunner {
    let (seed, scale) = search_further();
    let config = Config {
        cases: cases.saturating_mul(scale),
        failure_persistence: None,
        max_shrink_iters: 4096,
        max_shrink_time: 0,
        max_local_rejects: 65_536,
        max_global_rejects: 1024,
        rng_algorithm: RngAlgorithm::ChaCha,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed))
}

/// The seed and the case count's multiplier: the fixed ones, unless a longer search is asked
/// for (docs/robustness.md, "Searching further"): `PVAGENT_PROPTEST_SEED=N` mixes N into the
/// seed, `PVAGENT_PROPTEST_SCALE=K` runs K times each property's cases. The test command sets
/// neither.
fn search_further() -> ([u8; 32], u32) {
    let number = |name: &str| {
        let value = std::env::var(name).ok()?;
        Some(value.parse::<u64>().unwrap_or_else(|_| panic!("{name}={value}: not a decimal number")))
    };
    let mut seed = SEED;
    if let Some(n) = number("PVAGENT_PROPTEST_SEED") {
        seed[..8].iter_mut().zip(n.to_le_bytes()).for_each(|(s, b)| *s ^= b);
    }
    let scale = number("PVAGENT_PROPTEST_SCALE").map_or(1, |k| u32::try_from(k).unwrap_or(u32::MAX).max(1));
    (seed, scale)
}

/// Runs `test` on `cases` values of `strategy` and panics with the minimal failing input, if
/// any. A panic inside `test` is a failure like a failed `prop_assert!` (and is shrunk too).
pub fn check<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S::Value: core::fmt::Debug,
{
    if let Err(failure) = runner(cases).run(&strategy, test) {
        let seed =
            std::env::var("PVAGENT_PROPTEST_SEED").map_or(String::new(), |n| format!(" (PVAGENT_PROPTEST_SEED={n})"));
        panic!("{failure}{seed}");
    }
}

mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    /// The same seed draws the same values: the runs are reproducible.
    #[test]
    fn the_runner_is_deterministic() {
        let draw = || {
            let mut r = runner(1);
            (0..8).map(|_| any::<u64>().new_tree(&mut r).expect("a value").current()).collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }

    /// A failing property fails the test (the runner does not swallow it).
    #[test]
    #[should_panic(expected = "minimal failing input")]
    fn a_failing_property_fails() {
        check(64, any::<u32>(), |x| {
            prop_assert!(x < 1000);
            Ok(())
        });
    }
}
