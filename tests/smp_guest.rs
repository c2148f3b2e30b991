//! End-to-end tests of the guest on several vCPUs under QEMU TCG (`-smp`): every vCPU the MADT
//! lists is started with INIT-SIPI-SIPI and passes the SMP self-tests, and an AP that never
//! comes online is reported by name while the run goes on and ends with the failure.

use std::time::Duration;

use pvagent_abi::exit;
use pvagent_abi::report::{Line, Status};
use pvagent_tests::guest_elf;
use xtask::qemu::{self, Accel};

/// Boots the guest under QEMU TCG with `cpus` vCPUs (the later `-smp` wins over the default
/// one) and returns the guest's code and its console.
fn run_smp(cpus: u32, cmdline: &str) -> (Option<u32>, Vec<String>) {
    xtask::setup::ensure_qemu().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = qemu::command(guest_elf(), Accel::Tcg, cmdline);
    cmd.args(["-smp", &cpus.to_string()]);
    let outcome = xtask::proc::run(cmd, Duration::from_secs(120), false).unwrap_or_else(|e| panic!("{e}"));
    let code = outcome.status.code().and_then(qemu::guest_code_from_status);
    (code, outcome.output)
}

fn results(console: &[String]) -> Vec<(Status, String, String)> {
    console
        .iter()
        .filter_map(|l| match Line::parse(l) {
            Some(Line::Result { status, name, reason }) => Some((status, name.to_string(), reason.to_string())),
            _ => None,
        })
        .collect()
}

#[test]
fn qemu_with_four_vcpus_starts_them_all_and_passes_the_smp_selftests() {
    let (code, console) = run_smp(4, "expect-host=tcg tests=smp");
    assert_eq!(code, Some(exit::SUCCESS), "{console:#?}");
    assert!(
        console.iter().any(|l| l.contains("boot: 4 of 4 vCPUs online, APIC IDs by index [0, 1, 2, 3]")),
        "{console:#?}"
    );
    let results = results(&console);
    for name in [
        "smp::every_madt_cpu_is_online",
        "smp::every_cpu_takes_its_own_timer_ticks",
        "smp::a_task_runs_on_the_cpu_it_was_placed_on",
        "smp::every_cpu_sets_up_its_own_protocols",
        "smp::a_task_blocked_on_one_cpu_is_woken_from_another",
        "smp::an_unmapped_page_faults_on_every_cpu",
        "smp::the_split_lock_mode_applies_on_every_cpu",
    ] {
        assert!(results.iter().any(|(s, n, _)| *s == Status::Pass && n == name), "{name} did not pass: {results:#?}");
    }
}

#[test]
fn an_ap_that_never_comes_online_is_reported_by_name_and_the_run_ends() {
    // vCPU 2 starts but stops before it reports online (`smp-stuck-ap`): the boot vCPU gives
    // up on it after its bound, says which, starts the others, and the self-test fails.
    let (code, console) = run_smp(3, "expect-host=tcg smp-stuck-ap=2 tests=smp::every_madt_cpu_is_online");
    assert_eq!(code, Some(exit::FAILURE), "{console:#?}");
    assert!(
        console.iter().any(|l| l.contains("boot: warning: vCPU 2 (APIC ID 2) did not come online")),
        "{console:#?}"
    );
    assert!(console.iter().any(|l| l.contains("boot: 2 of 3 vCPUs online")), "{console:#?}");
    let results = results(&console);
    let (status, _, reason) =
        results.iter().find(|(_, n, _)| n == "smp::every_madt_cpu_is_online").expect("the self-test reported");
    assert_eq!(*status, Status::Fail);
    assert!(reason.contains("vCPU 2 (APIC ID Some(2)) is not online"), "{reason}");
}
