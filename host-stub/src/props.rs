//! Test support for the property tests of what the host takes from the guest (register values,
//! instruction bytes, addresses, sizes, counts, ring indices): a bounded, deterministic runner
//! and value generators biased toward the edges where arithmetic overflows or wraps.
//!
//! Every property runs a fixed number of cases from a fixed ChaCha seed, with no failure files
//! and no environment variable changing either, so that a run is the same on every machine and
//! in every CI run. A failure panics with the smallest input proptest shrank it to.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// The seed of every property's cases (ChaCha's 32 bytes).
const SEED: [u8; 32] = *b"pvagent host: guest is hostile!!";

/// Runs `property` on `cases` values of `strategy`; panics with the (shrunk) failing value.
pub fn check<S>(name: &str, cases: u32, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    // The case count, the seed and the failure files are set here, whatever PROPTEST_CASES and
    // the like say in the environment (which `Config::default()` reads): the run is the one the
    // test states.
    let (seed, scale) = search_further();
    let config = Config {
        cases: cases.saturating_mul(scale),
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        max_shrink_iters: 2048,
        max_local_rejects: 65_536,
        max_global_rejects: 1024,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed.bytes));
    match runner.run(&strategy, property) {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => {
            panic!("property {name} failed{}: {reason}\nminimal input: {value:x?}", seed.named)
        }
        Err(TestError::Abort(reason)) => panic!("property {name} aborted: {reason}"),
    }
}

/// The seed a run draws from, and how a failure names it.
struct Seed {
    bytes: [u8; 32],
    /// Empty for the fixed seed; else the variable that changed it.
    named: String,
}

/// The fixed seed and case counts, unless a longer search is asked for (docs/robustness.md,
/// "Searching further"): `PVAGENT_PROPTEST_SEED=N` mixes N into the seed,
/// `PVAGENT_PROPTEST_SCALE=K` runs K times each property's cases. The test command sets neither.
fn search_further() -> (Seed, u32) {
    let read = |name: &str| -> Option<u64> {
        let text = std::env::var(name).ok()?;
        Some(text.parse().unwrap_or_else(|_| panic!("{name}={text}: not a decimal number")))
    };
    let mut seed = Seed { bytes: SEED, named: String::new() };
    if let Some(n) = read("PVAGENT_PROPTEST_SEED") {
        for (byte, mix) in seed.bytes.iter_mut().zip(n.to_le_bytes()) {
            *byte ^= mix;
        }
        seed.named = format!(" (PVAGENT_PROPTEST_SEED={n})");
    }
    let scale = read("PVAGENT_PROPTEST_SCALE").map_or(1, |k| u32::try_from(k).unwrap_or(u32::MAX).max(1));
    (seed, scale)
}

/// Values where 64-bit address arithmetic goes wrong: 0, 1, the top, the sign bit, the 32-bit
/// and canonical (48- and 57-bit) boundaries, page boundaries, and where the host stub puts
/// guest RAM's end and its regions.
pub const EDGES: &[u64] = &[
    0,
    1,
    2,
    0xFFF,
    0x1000,
    0x1001,
    0xA_0000,
    0x10_0000,
    32 << 20,
    64 << 20,
    128 << 20,
    3 << 30,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_F000,
    0xFFFF_FFFF,
    1 << 32,
    4 << 30,
    5 << 30,
    6 << 30,
    7 << 30,
    (1 << 46) - 1,
    1 << 46,
    (1 << 47) - 1,
    1 << 47,
    0xFFFF_8000_0000_0000,
    (1 << 56) - 1,
    0xFF00_0000_0000_0000,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 0x1000,
    u64::MAX - 0xFFF,
    u64::MAX - 15,
    u64::MAX - 7,
    u64::MAX - 1,
    u64::MAX,
];

/// A 64-bit value biased toward [`EDGES`]: an edge, an edge a little off (either way, wrapping),
/// a power of two, a page boundary a little off, or anything. One plain mapping of two random
/// words rather than a union of strategies: proptest's unions cost a millisecond a value in a
/// debug build, and a case draws two dozen of these.
pub fn edge_u64() -> impl Strategy<Value = u64> + Clone {
    any::<(u64, u64)>().prop_map(|(pick, raw)| edge_of(pick, raw))
}

/// The value `pick` chooses with `raw`'s bits (see [`edge_u64`]).
fn edge_of(pick: u64, raw: u64) -> u64 {
    let near = |x: u64| x.wrapping_add(((pick >> 8) % 161) as i64 as u64).wrapping_sub(80);
    let edge = EDGES[(raw % EDGES.len() as u64) as usize];
    match pick % 16 {
        0..=4 => raw,
        5..=8 => edge,
        9..=12 => near(edge),
        13 => 1 << (raw % 64),
        _ => near(raw & !0xFFF),
    }
}

/// Whether `[start, start + len)` lies within one of `ranges`, computed in 128 bits (where no
/// sum of two 64-bit values wraps): the answer a host check must give.
pub fn lies_within(ranges: &[std::ops::Range<u64>], start: u64, len: u64) -> bool {
    let end = u128::from(start) + u128::from(len);
    ranges.iter().any(|r| r.start <= start && end <= u128::from(r.end))
}

/// Guest RAM as a memory map could list it with a range that reaches the top of the address
/// space (no host stub's RAM does: it tries the checks' arithmetic there).
pub const RAM_TO_TOP: &[std::ops::Range<u64>] = &[0..0xA_0000, 0x10_0000..64 << 20, u64::MAX - 0x20_0000..u64::MAX];

/// A 32-bit value biased toward its edges (ring indices, `head` and `tail`): 0, 2^31 and the
/// top, each a little off either way, or anything.
pub fn edge_u32() -> impl Strategy<Value = u32> + Clone {
    any::<(u32, u32)>().prop_map(|(pick, raw)| {
        let edge = [0u32, 0x8000_0000, u32::MAX][(raw % 3) as usize];
        match pick % 4 {
            0 | 1 => raw,
            _ => edge.wrapping_add((pick >> 8) % 601).wrapping_sub(300),
        }
    })
}
