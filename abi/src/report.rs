//! The self-test report format on the console: one line per test and a summary line.
//!
//! ```text
//! selftest: start
//! selftest: PASS arch::page_fault_reports_cr2
//! selftest: FAIL pnp::ring_wakes_task: woke task 3, expected task 4
//! selftest: SKIP pnp::sync_path: needs the host stub's demand pager
//! selftest: 12 passed, 1 failed, 3 skipped
//! ```
//!
//! The run's verdict is the exit code ([`crate::exit`]); these lines say which test did what.
//! The start line is printed once, right before the first test runs: a host times each test
//! from the report line before it (or from the start line). With the bare command line word
//! [`LIST_WORD`] the guest runs nothing and prints one [`Line::Listed`] per test instead:
//!
//! ```text
//! selftest: TEST arch::timer_ticks
//! selftest: TEST ac::host_injects_only_real_split_locks needs=host-stub,sld-trigger,sld-detection
//! selftest: TEST harness::deliberate_failure on-request
//! ```
//!
//! The guest writes them with [`Line`]'s `Display`; hosts read them back with [`Line::parse`].

use core::fmt;

/// Prefix of every report line.
pub const PREFIX: &str = "selftest: ";

/// The bare command line word that makes the guest list its self-tests instead of running them.
pub const LIST_WORD: &str = "list";

crate::wire_enum! {
/// One thing a self-test needs from the host that runs it. A test declares its needs in its
/// table entry; the guest's runner checks them before it runs the test (a need not met makes
/// the test a SKIP that says which), and lists them with [`Line::Listed`].
pub enum Need: u8 {
    /// The pvagent host stub (under QEMU the test is skipped).
    HostStub = 0,
    /// The host stub's split-lock trigger (`crate::sld::TRIGGER_GPA`).
    SldTrigger = 1,
    /// Split-lock detection enumerated to the guest (CPUID, then IA32_CORE_CAPABILITIES).
    SldDetection = 2,
    /// The host's policy for split locks of a guest whose detection is off is the default,
    /// `inject-if-enabled` (`crate::sld::HostPolicy`): the others stop the run or switch
    /// detection off for the whole VM.
    SldDefaultPolicy = 3,
    /// The host stub's demand pager, with the page-not-present protocol registered. Only a
    /// host without the pager or `pnp=off` makes the test a SKIP: a registration that was
    /// refused fails it.
    Pager = 4,
    /// The demand pager in ring mode when the guest boots (`crate::pnp::HostMode::Ring`).
    PnpRingMode = 5,
    /// Hardware alignment-check #AC at CPL 3 (QEMU TCG does not raise it).
    AlignmentCheck = 6,
    /// `expect-host=` on the guest's command line, naming the host the test expects.
    ExpectHost = 7,
    /// ACPI tables from the host (an RSDP in the boot information).
    Acpi = 8,
    /// A page-not-present ring of at least two entries, so that two tasks can wait for
    /// absent pages at once (`pnp-ring=1` leaves one token).
    PnpTwoTokens = 9,
    /// The host's policy for split locks of a guest whose detection is off is `exit`: the
    /// test's split lock ends the run.
    SldExitPolicy = 10,
    /// The host's policy for split locks of a guest whose detection is off is
    /// `disable-globally`: the test's split lock switches detection off for the whole VM.
    SldDisableGloballyPolicy = 11,
    /// KVM's async page fault ABI (`crate::kvm_apf`), enabled by the guest: KVM's leaves offer
    /// it with "page ready" as an interrupt.
    KvmApf = 12,
    /// The host stub serving KVM's async page fault ABI itself (any pager mode but
    /// `KvmApfKernel`): only it can send "page ready" before its "page not present" (stock
    /// KVM never does).
    KvmApfHostStub = 13,
    /// The host stub serving KVM's async page fault ABI itself (any pager mode but
    /// `KvmApfKernel`), whose disabling answers at once: KVM's waits for the fetch its worker
    /// runs, so a test that holds that page until after the disabling would wait for itself.
    KvmApfDisableAtOnce = 14,
    /// Two or more vCPUs online (`cargo xtask qemu --smp N`, the host stub's `--vcpus N`).
    SeveralCpus = 15,
    /// The demand pager in mode `ve` (`crate::pnp::HostMode::Ve`), and the guest's VE
    /// information areas registered (`crate::ve`).
    VeMode = 16,
}
}

impl Need {
    /// The need's name in a [`Line::Listed`]: lowercase words joined by `-`.
    pub const fn name(self) -> &'static str {
        match self {
            Need::HostStub => "host-stub",
            Need::SldTrigger => "sld-trigger",
            Need::SldDetection => "sld-detection",
            Need::SldDefaultPolicy => "sld-default-policy",
            Need::Pager => "pager",
            Need::PnpRingMode => "pnp-ring-mode",
            Need::AlignmentCheck => "alignment-check",
            Need::ExpectHost => "expect-host",
            Need::Acpi => "acpi",
            Need::PnpTwoTokens => "pnp-two-tokens",
            Need::SldExitPolicy => "sld-exit-policy",
            Need::SldDisableGloballyPolicy => "sld-disable-globally-policy",
            Need::KvmApf => "kvm-apf",
            Need::KvmApfHostStub => "kvm-apf-host-stub",
            Need::KvmApfDisableAtOnce => "kvm-apf-disable-at-once",
            Need::SeveralCpus => "several-cpus",
            Need::VeMode => "ve-mode",
        }
    }

    /// What the need is, in words, for listings.
    pub const fn description(self) -> &'static str {
        match self {
            Need::HostStub => "the pvagent host stub (QEMU skips the test)",
            Need::SldTrigger => "the host stub's split-lock trigger (absent with --no-sld)",
            Need::SldDetection => {
                "split-lock detection enumerated to the guest (--sld-enumeration split-lock-detect, the default)"
            }
            Need::SldDefaultPolicy => {
                "the host stub's default split-lock policy, inject-if-enabled (not --sld-policy exit or disable-globally)"
            }
            Need::Pager => {
                "the host stub's demand pager, registered by the guest (not --pnp-mib 0, not pnp=off; a registration the host or guest refused fails the test)"
            }
            Need::PnpRingMode => "the demand pager in ring mode at boot (not --pnp-mode sync)",
            Need::AlignmentCheck => "hardware alignment-check #AC at CPL 3 (QEMU TCG has none)",
            Need::ExpectHost => "expect-host= on the guest command line (xtask sets it)",
            Need::Acpi => "ACPI tables from the host (QEMU and the host stub give them)",
            Need::PnpTwoTokens => "a page-not-present ring of at least 2 entries (not pnp-ring=1)",
            Need::SldExitPolicy => "the host stub's split-lock policy exit (--sld-policy exit); the test ends the run",
            Need::SldDisableGloballyPolicy => {
                "the host stub's split-lock policy disable-globally (--sld-policy disable-globally)"
            }
            Need::KvmApf => {
                "KVM's async page fault ABI, offered with page ready as an interrupt (KVM, QEMU/KVM, the host stub)"
            }
            Need::KvmApfHostStub => {
                "the host stub serving KVM's async page fault ABI itself (not --pnp-mode kvm-apf-kernel, where KVM does)"
            }
            Need::KvmApfDisableAtOnce => {
                "a host whose disabling of KVM's async page faults answers at once: the host stub serving the ABI (not --pnp-mode kvm-apf-kernel, where KVM's waits for the fetch it runs)"
            }
            Need::SeveralCpus => "two or more vCPUs online (QEMU's -smp, the host stub's --vcpus; both default to 1)",
            Need::VeMode => "the host stub's demand pager in mode ve (--pnp-mode ve), which raises #VE",
        }
    }

    /// The need a [`Need::name`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        Need::ALL.iter().copied().find(|need| need.name() == name)
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// A set of [`Need`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs(u32);

impl Needs {
    /// Nothing: the test runs on any host.
    pub const NONE: Needs = Needs(0);

    /// The set of `needs`.
    pub const fn of(needs: &[Need]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < needs.len() {
            bits |= needs[i].bit();
            i += 1;
        }
        Needs(bits)
    }

    /// Whether `need` is in the set.
    pub const fn contains(self, need: Need) -> bool {
        self.0 & need.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The needs in the set, in [`Need::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Need> {
        Need::ALL.iter().copied().filter(move |need| self.contains(*need))
    }
}

/// How one test ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The test passed.
    Pass,
    /// The test failed; a reason follows.
    Fail,
    /// The test did not run; a reason follows.
    Skip,
}

impl Status {
    /// The word on the report line.
    pub const fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One report line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A test's result.
    Result {
        /// How it ended.
        status: Status,
        /// Its name, `module::what_it_shows` (no spaces).
        name: &'a str,
        /// Why it failed or was skipped; empty for a pass.
        reason: &'a str,
    },
    /// The runner starts the first selected test.
    Start,
    /// A test as the guest lists it (command line word [`LIST_WORD`]), instead of running it.
    Listed {
        /// Its name.
        name: &'a str,
        /// Whether it runs without being named (`false`: only when `tests=` names it exactly).
        on_by_default: bool,
        /// What it needs from the host.
        needs: Needs,
    },
    /// The final tally.
    Summary {
        /// Tests that passed.
        passed: u32,
        /// Tests that failed, plus one for a run that ended early or selected nothing
        /// (whose exit code is then `exit::NO_TEST_SELECTED`).
        failed: u32,
        /// Tests that were skipped.
        skipped: u32,
    },
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Result { status, name, reason: "" } => {
                write!(f, "{PREFIX}{} {name}", status.word())
            }
            Line::Result { status, name, reason } => {
                write!(f, "{PREFIX}{} {name}: {reason}", status.word())
            }
            Line::Start => write!(f, "{PREFIX}{START_WORD}"),
            Line::Listed { name, on_by_default, needs } => {
                write!(f, "{PREFIX}{LISTED_WORD} {name}")?;
                if !on_by_default {
                    write!(f, " {ON_REQUEST_WORD}")?;
                }
                for (i, need) in needs.iter().enumerate() {
                    f.write_str(if i == 0 { " needs=" } else { "," })?;
                    f.write_str(need.name())?;
                }
                Ok(())
            }
            Line::Summary { passed, failed, skipped } => {
                write!(f, "{PREFIX}{passed} passed, {failed} failed, {skipped} skipped")
            }
        }
    }
}

impl<'a> Line<'a> {
    /// Reads a report line back; `None` for any other console line.
    pub fn parse(line: &'a str) -> Option<Line<'a>> {
        let rest = line.trim_end_matches(['\r', '\n']).strip_prefix(PREFIX)?;
        if rest == START_WORD {
            return Some(Line::Start);
        }
        if let Some(listed) = rest.strip_prefix(LISTED_WORD).and_then(|r| r.strip_prefix(' ')) {
            return Self::parse_listed(listed);
        }
        for status in [Status::Pass, Status::Fail, Status::Skip] {
            if let Some(after) = rest.strip_prefix(status.word()).and_then(|r| r.strip_prefix(' ')) {
                let (name, reason) = match after.split_once(": ") {
                    Some((name, reason)) => (name, reason),
                    None => (after, ""),
                };
                if name.is_empty() || name.contains(' ') {
                    return None;
                }
                return Some(Line::Result { status, name, reason });
            }
        }
        let mut counts = rest.split(", ");
        let mut count =
            |word: &str| -> Option<u32> { counts.next()?.strip_suffix(word)?.strip_suffix(' ')?.parse().ok() };
        let (passed, failed, skipped) = (count("passed")?, count("failed")?, count("skipped")?);
        Some(Line::Summary { passed, failed, skipped })
    }

    /// A [`Line::Listed`] after its word: the name, then `on-request` and `needs=...` if any.
    fn parse_listed(rest: &'a str) -> Option<Line<'a>> {
        let mut words = rest.split(' ');
        let name = words.next().filter(|n| !n.is_empty())?;
        let (mut on_by_default, mut needs) = (true, Needs::NONE);
        for word in words {
            if word == ON_REQUEST_WORD && on_by_default {
                on_by_default = false;
            } else if let Some(list) = word.strip_prefix("needs=").filter(|_| needs.is_empty()) {
                for need in list.split(',') {
                    needs.0 |= Need::from_name(need)?.bit();
                }
            } else {
                return None;
            }
        }
        Some(Line::Listed { name, on_by_default, needs })
    }
}

/// The word of [`Line::Start`].
const START_WORD: &str = "start";
/// The word that begins a [`Line::Listed`].
const LISTED_WORD: &str = "TEST";
/// The word that marks a listed test as off by default.
const ON_REQUEST_WORD: &str = "on-request";

/// Prefix of a benchmark result line: `bench: <name> <key>=<value> ...`, values are unsigned
/// integers (nanoseconds, counts) so that nothing is lost to formatting.
pub const BENCH_PREFIX: &str = "bench: ";

/// Reads a benchmark line back: its name and its `key=value` pairs.
pub fn parse_bench(line: &str) -> Option<(&str, impl Iterator<Item = (&str, u64)>)> {
    let rest = line.trim_end_matches(['\r', '\n']).strip_prefix(BENCH_PREFIX)?;
    let mut words = rest.split_ascii_whitespace();
    let name = words.next()?;
    if name.contains('=') {
        return None;
    }
    Some((name, words.filter_map(|w| w.split_once('=')).filter_map(|(k, v)| Some((k, v.parse().ok()?)))))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn every_line_kind_round_trips() {
        let lines = [
            Line::Result { status: Status::Pass, name: "arch::timer_ticks", reason: "" },
            Line::Result { status: Status::Fail, name: "pnp::x", reason: "woke task 3: expected 4" },
            Line::Result { status: Status::Skip, name: "pnp::y", reason: "needs the host stub" },
            Line::Summary { passed: 12, failed: 1, skipped: 3 },
            Line::Start,
            Line::Listed { name: "arch::timer_ticks", on_by_default: true, needs: Needs::NONE },
            Line::Listed {
                name: "ac::x",
                on_by_default: false,
                needs: Needs::of(&[Need::HostStub, Need::SldTrigger, Need::Acpi]),
            },
        ];
        for line in lines {
            let text = line.to_string();
            assert_eq!(Line::parse(&text), Some(line), "{text}");
        }
    }

    #[test]
    fn other_console_lines_are_not_report_lines() {
        assert_eq!(Line::parse("pvagent: booting"), None);
        assert_eq!(Line::parse("selftest: PASSED x"), None);
        assert_eq!(Line::parse("selftest: 1 passed, 2 failed"), None);
        assert_eq!(Line::parse("selftest: PASS two words"), None);
        assert_eq!(Line::parse("selftest: starting"), None);
        assert_eq!(Line::parse("selftest: TEST x needs=no-such-need"), None);
        assert_eq!(Line::parse("selftest: TEST x something-else"), None);
        assert_eq!(Line::parse("selftest: TEST "), None);
    }

    #[test]
    fn every_need_has_its_own_name_and_round_trips() {
        for &need in Need::ALL {
            assert_eq!(Need::from_name(need.name()), Some(need));
            assert!(!need.name().contains([' ', ',']), "{}", need.name());
            assert!(!need.description().is_empty());
            assert!(need.bit() != 0, "{need:?} fits in the set");
        }
        let all = Needs::of(Need::ALL);
        assert_eq!(all.iter().count(), Need::ALL.len());
        assert!(Needs::NONE.is_empty() && Needs::NONE.iter().next().is_none());
    }

    #[test]
    fn bench_lines_parse_into_name_and_integer_pairs() {
        let (name, pairs) = parse_bench("bench: io ns=1234 iterations=5000").unwrap();
        assert_eq!(name, "io");
        let pairs: std::vec::Vec<_> = pairs.collect();
        assert_eq!(pairs, [("ns", 1234), ("iterations", 5000)]);
        assert!(parse_bench("selftest: PASS x").is_none());
        assert!(parse_bench("bench: k=v").is_none(), "a line needs a name");
        let (_, pairs) = parse_bench("bench: x a=1 b=oops c=3").unwrap();
        assert_eq!(pairs.count(), 2, "non-integer values are dropped");
    }

    #[test]
    fn the_format_is_the_documented_one() {
        let line = Line::Result { status: Status::Fail, name: "a::b", reason: "why" };
        assert_eq!(line.to_string(), "selftest: FAIL a::b: why");
        assert_eq!(
            Line::Summary { passed: 1, failed: 0, skipped: 2 }.to_string(),
            "selftest: 1 passed, 0 failed, 2 skipped"
        );
        assert_eq!(Line::Start.to_string(), "selftest: start");
        let listed =
            Line::Listed { name: "a::b", on_by_default: false, needs: Needs::of(&[Need::Pager, Need::HostStub]) };
        assert_eq!(listed.to_string(), "selftest: TEST a::b on-request needs=host-stub,pager");
    }
}
