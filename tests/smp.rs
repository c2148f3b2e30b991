//! End-to-end tests of the host stub's several vCPUs with hand-made guests: the boot vCPU starts
//! an AP with INIT and SIPI through its local APIC (as pvagent's kernel does), and the AP's
//! real-mode code at the trampoline page shows what the host stub gave it (its own CPUID), ends
//! the run through the exit port, sends the boot vCPU an IPI, or fails. Each path is taken by
//! construction: the boot vCPU spins (`jmp $`) until the host stops it, and the vCPUs no SIPI
//! reaches wait inside KVM.

use pvagent_host::config::Siblings;
use pvagent_host::cpuid::Topology;
use pvagent_host::memory::AP_TRAMPOLINE_GPA;
use pvagent_host::producers::Producers;
use pvagent_host::producers::sld::SldConfig;
use pvagent_host::producers::sld::policy::{self, Enumeration, Policy, SmtConflict};
use pvagent_host::{Error, RunResult, Vm};
use pvagent_tests::{Code32, config, guest_elf, require_kvm, run_stub_configured, temp_file, temp_path, tiny_elf};

/// The local APIC's interrupt command register (xAPIC MMIO; the APIC is enabled at reset).
const ICR_LOW: u32 = 0xFEE0_0300;
const ICR_HIGH: u32 = 0xFEE0_0310;
/// ICR delivery modes, with the level bit (assert) set.
const INIT: u32 = 0x4500;
const STARTUP: u32 = 0x4600;
/// Register numbers of x86's ModRM byte.
const EAX: u8 = 0;
const EDX: u8 = 2;
const EBX: u8 = 3;
/// What an AP's exit code is marked with, so that no other writer's code passes for it.
const AP_MARK: u32 = 0x5A00;

/// 32-bit boot code: copy `ap_code` (16-bit real-mode code) to the trampoline page, send INIT
/// to the vCPU with APIC ID `target`, then SIPIs, again and again, until the host stops the run
/// (the MP specification sends two; KVM ignores a SIPI to an AP that runs): the AP starts
/// however the host schedules its thread, with no delay to tune.
fn boot_starting_ap(target: u8, ap_code: &[u8]) -> Vec<u8> {
    boot_starting_ap_after(Code32::new(), target, ap_code)
}

/// [`boot_starting_ap`] after `setup`.
fn boot_starting_ap_after(setup: Code32, target: u8, ap_code: &[u8]) -> Vec<u8> {
    let mut code = setup;
    for (i, chunk) in ap_code.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        code = code.store(AP_TRAMPOLINE_GPA as u32 + 4 * i as u32, u32::from_le_bytes(word));
    }
    let vector = (AP_TRAMPOLINE_GPA >> 12) as u32;
    let mut bytes = code.store(ICR_HIGH, u32::from(target) << 24).store(ICR_LOW, INIT).spin();
    bytes.truncate(bytes.len() - 2); // no spin: the SIPI loop instead
    bytes.push(0xB8); // again: mov eax, STARTUP | vector
    bytes.extend_from_slice(&(STARTUP | vector).to_le_bytes());
    bytes.push(0xA3); // mov [ICR_LOW], eax
    bytes.extend_from_slice(&ICR_LOW.to_le_bytes());
    bytes.push(0xB9); // mov ecx, 200
    bytes.extend_from_slice(&200u32.to_le_bytes());
    bytes.extend_from_slice(&[0x49, 0x75, 0xFD]); // dec ecx; jnz (back to the dec)
    bytes.extend_from_slice(&[0xEB, 0xEC]); // jmp again (-20)
    bytes
}

/// 16-bit code: CPUID `leaf`.`subleaf`, then `register` (its ModRM number: 0 EAX, 2 EDX, 3 EBX) marked with
/// [`AP_MARK`] to the exit port.
fn ap_reports_cpuid(leaf: u32, subleaf: u32, register: u8) -> Vec<u8> {
    let mut c = vec![0x66, 0xB8];
    c.extend_from_slice(&leaf.to_le_bytes()); // mov eax, leaf
    c.extend_from_slice(&[0x66, 0xB9]);
    c.extend_from_slice(&subleaf.to_le_bytes()); // mov ecx, subleaf
    c.extend_from_slice(&[0x0F, 0xA2]); // cpuid
    // mov eax, <register> (89 /r: reg field = the source register, rm = EAX)
    c.extend_from_slice(&[0x66, 0x89, 0xC0 | (register << 3)]);
    c.extend_from_slice(&[0x66, 0x0D]);
    c.extend_from_slice(&AP_MARK.to_le_bytes()); // or eax, AP_MARK
    c.extend_from_slice(&[0x66, 0xE7, pvagent_abi::port::DEBUG_EXIT as u8]); // out 0xf4, eax
    c.extend_from_slice(&[0xEB, 0xFE]); // jmp $
    c
}

/// 16-bit code that triple-faults: an IDT of limit 0 (at offset 0x10 of the page, read through
/// CS) and an invalid opcode: #UD -> #GP -> #DF -> shutdown.
fn ap_triple_faults() -> Vec<u8> {
    let mut c = vec![0x2E, 0x0F, 0x01, 0x1E, 0x10, 0x00]; // lidt cs:[0x10]
    c.extend_from_slice(&[0x0F, 0x0B, 0xEB, 0xFE]); // ud2; jmp $
    c.resize(0x10 + 6, 0); // the IDTR: limit 0, base 0
    c
}

fn run(name: &str, boot: &[u8], vcpus: usize, threads_per_core: u32) -> RunResult {
    run_configured(name, boot, vcpus, threads_per_core, |_| {})
}

fn run_configured(
    name: &str,
    boot: &[u8],
    vcpus: usize,
    threads_per_core: u32,
    change: impl FnOnce(&mut pvagent_host::Config),
) -> RunResult {
    require_kvm();
    let image = temp_file(name, &tiny_elf(boot, true, 0));
    let mut c = config(&image, "");
    c.vcpus = vcpus;
    c.threads_per_core = threads_per_core;
    change(&mut c);
    Vm::new(c, Vec::new()).expect("setup").run()
}

#[test]
fn an_ap_started_by_sipi_has_its_own_apic_id_in_cpuid_and_its_exit_ends_the_run() {
    for target in [1u8, 3] {
        let r = run("smp-apic-id.elf", &boot_starting_ap(target, &ap_reports_cpuid(0xB, 0, EDX)), 4, 1);
        assert!(r.host_error.is_none(), "{:?}", r.host_error);
        assert_eq!(r.guest_exit_code, Some(AP_MARK | u32::from(target)), "leaf 0xB EDX on vCPU {target}");
        let exits = |i: usize| r.report.get(&format!("vcpu{i}.exits"));
        assert!(exits(usize::from(target)) >= 1, "the AP's own exit");
        assert!(exits(0) >= 1, "the spinning boot vCPU was stopped: {:?}", r.report.counters);
    }
    let r = run("smp-leaf1.elf", &boot_starting_ap(2, &ap_reports_cpuid(1, 0, EBX)), 4, 1);
    assert_eq!(r.guest_exit_code.map(|c| c >> 24), Some(2), "leaf 1 EBX[31:24]");
}

/// KVM left the last vCPU created out of its interrupt routing until the host stub rebuilt it
/// (`Vm::new`): an INIT-SIPI to the highest APIC ID reached no one.
#[test]
fn the_last_vcpu_created_can_be_started_too() {
    for vcpus in [2usize, 8] {
        let last = vcpus as u8 - 1;
        let r = run("smp-last.elf", &boot_starting_ap(last, &ap_reports_cpuid(0xB, 0, EDX)), vcpus, 1);
        assert_eq!(r.guest_exit_code, Some(AP_MARK | u32::from(last)), "{vcpus} vCPUs: {:?}", r.host_error);
    }
}

#[test]
fn with_two_threads_per_core_the_ap_sees_an_smt_level_and_its_core() {
    let smt = Topology { vcpus: 4, threads_per_core: 2 };
    // Leaf 0xB, subleaf 0 (SMT): EAX is the shift to the core ID.
    let r = run("smp-smt.elf", &boot_starting_ap(3, &ap_reports_cpuid(0xB, 0, EAX)), 4, 2);
    assert_eq!(r.guest_exit_code, Some(AP_MARK | smt.smt_shift()), "{:?}", r.host_error);
    // Leaf 0x1F, subleaf 1 (core): EBX counts the package's logical processors.
    let r = run("smp-core.elf", &boot_starting_ap(3, &ap_reports_cpuid(0x1F, 1, EBX)), 4, 2);
    assert_eq!(r.guest_exit_code, Some(AP_MARK | 4), "{:?}", r.host_error);
}

#[test]
fn an_ap_that_fails_stops_the_whole_vm_with_an_error_naming_it() {
    let r = run("smp-ap-fault.elf", &boot_starting_ap(1, &ap_triple_faults()), 3, 1);
    match &r.host_error {
        Some(Error::OnVcpu { index: 1, source }) => {
            assert!(
                matches!(**source, Error::TripleFault { .. } | Error::Emulation { .. }),
                "the AP's own failure: {source}"
            );
            assert!(r.host_error.as_ref().is_some_and(Error::is_guest_fault));
        }
        other => panic!("expected vCPU 1's failure, got {other:?}"),
    }
    assert!(r.host_error.as_ref().is_some_and(|e| e.to_string().starts_with("vCPU 1: ")));
    assert_eq!(r.exit_status(), 2);
    assert_eq!(r.guest_exit_code, None);
}

/// Seed 000 with SMT siblings, simulated (`threads_per_core` 2) or the host's own (injected
/// through `Config::host_smt_active`, so that this machine's SMT state chooses nothing): the
/// split-lock configurations that need MSR_TEST_CTRL per vCPU are refused before the guest runs,
/// and the library's own defaults (no split-lock option chosen) are the rule's, with which the
/// guest boots and its split-lock self-tests find detection not offered. Without siblings the
/// per-vCPU configuration runs.
#[test]
fn with_smt_siblings_split_lock_detection_is_not_virtualized_per_vcpu() {
    require_kvm();
    let mut c = config(guest_elf(), "tests=ac");
    c.vcpus = 2;
    c.host_smt_active = Some(false);
    let with =
        |enumeration, policy| Producers { sld: Some(SldConfig::chosen(enumeration, policy)), ..Producers::defaults() };
    let refusals = [
        (Enumeration::SplitLockDetect, Policy::DisableGlobally, SmtConflict::PerVcpuMsr),
        (Enumeration::CoreCapabilitiesOnly, Policy::InjectIfEnabled, SmtConflict::PerVcpuPolicy),
    ];
    let smt_policy = format!("not virtualized per vCPU (seed 000); policy {}", policy::SMT_DEFAULTS.1.name());
    for (threads_per_core, host_smt_active, siblings) in [(2, false, Siblings::Simulated), (1, true, Siblings::Host)] {
        c.threads_per_core = threads_per_core;
        c.host_smt_active = Some(host_smt_active);
        assert_eq!(c.siblings(), Some(siblings));
        for (enumeration, policy, expected) in refusals {
            let producers = with(enumeration, policy).build().expect("producers");
            match Vm::new(c.clone(), producers) {
                Err(Error::SldWithSmt { siblings: seen, conflict }) => {
                    assert_eq!((seen, conflict), (siblings, expected))
                }
                other => {
                    panic!("{siblings}: {enumeration:?} {policy:?}: expected the SMT rule's refusal, got {other:?}")
                }
            }
        }
        let r = run_stub_configured(c.clone(), &Producers::defaults());
        assert!(r.passed(), "{siblings}: {:?} {:#?}", r.host_error, r.tests);
        assert!(r.report.lines.iter().any(|l| l.contains(&smt_policy)), "{siblings}: {:#?}", r.report.lines);
    }
    // One thread per core on a host without SMT: per-vCPU virtualization is back.
    c.threads_per_core = 1;
    c.host_smt_active = Some(false);
    assert_eq!(c.siblings(), None);
    let r = run_stub_configured(c, &with(Enumeration::SplitLockDetect, Policy::InjectIfEnabled));
    assert!(r.passed(), "{:?}", r.host_error);
}

/// The time limit covers every vCPU: a boot vCPU that spins and APs that wait for a SIPI that
/// never comes are all stopped, and the run is the timeout's, not one vCPU's.
#[test]
fn the_time_limit_stops_every_vcpu() {
    let r = run_configured("smp-spin.elf", &Code32::new().spin(), 4, 1, |c| {
        c.timeout = Some(std::time::Duration::from_secs(1));
    });
    assert!(matches!(r.host_error, Some(Error::Timeout { seconds: 1 })), "{:?}", r.host_error);
    for i in 0..4 {
        assert!(r.report.counters.contains_key(&format!("vcpu{i}.exits")), "vCPU {i} reported");
    }
}

/// With several vCPUs every vCPU has its own counters, KVM statistics and timeline track; the
/// AP's exit to user space is on its own track, not vCPU 0's.
#[test]
fn each_vcpu_has_its_own_counters_kvm_statistics_and_timeline_track() {
    let path = temp_path("smp-trace.json");
    let boot = boot_starting_ap(1, &ap_reports_cpuid(0xB, 0, EDX));
    let r = run_configured("smp-trace.elf", &boot, 2, 1, |c| c.trace = Some(path.clone()));
    assert_eq!(r.guest_exit_code, Some(AP_MARK | 1), "{:?}", r.host_error);
    assert!(r.report.get("vcpu1.exits") >= 2, "the SIPI's EAGAIN and the exit port: {:?}", r.report.counters);
    for i in 0..2 {
        assert!(
            r.report.counters.keys().any(|k| k.starts_with(&format!("kvm.vcpu{i}."))),
            "KVM's statistics of vCPU {i}: {:?}",
            r.report.counters
        );
    }
    assert!(!r.report.counters.keys().any(|k| k.starts_with("kvm.exits")), "no unnumbered KVM statistics");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the trace file")).expect("JSON");
    let events = json["traceEvents"].as_array().expect("events");
    let tid = |name: &str| {
        events
            .iter()
            .find(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["args"]["name"] == name)
            .and_then(|e| e["tid"].as_u64())
            .unwrap_or_else(|| panic!("no track {name:?}"))
    };
    let ap = tid("vCPU 1 (exits)");
    assert_ne!(ap, tid("vCPU 0 (exits)"));
    assert!(
        events.iter().any(|e| e["tid"] == ap && e["name"] == "io out" && e["args"]["port"] == "0xf4"),
        "the AP's exit-port write on its own track"
    );
}

/// Where the IPI test keeps its descriptor tables and stack (low RAM, clear of the trampoline).
const GDT: u32 = 0x9000;
const GDTR: u32 = 0x9100;
const IDTR: u32 = 0x9108;
const IDT: u32 = 0x9200;
const STACK_TOP: u32 = 0x9_F000;
/// The vector the AP's IPI raises on the boot vCPU.
const IPI_VECTOR: u32 = 0x40;

/// 16-bit code: switch the local APIC to x2APIC mode, send a fixed IPI of [`IPI_VECTOR`] to APIC
/// ID 0 through the ICR MSR, then spin.
fn ap_sends_ipi_to_the_boot_vcpu() -> Vec<u8> {
    let mut c = vec![0x66, 0xB9, 0x1B, 0, 0, 0, 0x0F, 0x32]; // mov ecx, IA32_APIC_BASE; rdmsr
    c.extend_from_slice(&[0x66, 0x0D, 0x00, 0x0C, 0, 0, 0x0F, 0x30]); // or eax, EN | EXTD; wrmsr
    c.extend_from_slice(&[0x66, 0xB9, 0x30, 0x08, 0, 0]); // mov ecx, x2APIC ICR (0x830)
    c.extend_from_slice(&[0x66, 0x31, 0xD2]); // xor edx, edx: destination APIC ID 0
    c.push(0x66);
    c.push(0xB8);
    c.extend_from_slice(&IPI_VECTOR.to_le_bytes()); // mov eax, vector (fixed, physical, edge)
    c.extend_from_slice(&[0x0F, 0x30, 0xEB, 0xFE]); // wrmsr; jmp $
    c
}

/// The boot vCPU's side: a flat GDT, an IDT whose [`IPI_VECTOR`] gate leads to a handler that
/// writes `AP_MARK | IPI_VECTOR` to the exit port, its local APIC software-enabled, interrupts
/// on; then it starts the AP.
fn boot_taking_an_ipi(handler_at: u32) -> Code32 {
    let gate_low = (0x08 << 16) | (handler_at & 0xFFFF);
    let gate_high = (handler_at & 0xFFFF_0000) | 0x8E00; // present, DPL 0, 32-bit interrupt gate
    Code32::new()
        .mov_esp(STACK_TOP)
        .store(GDT + 8, 0x0000_FFFF) // 0x08: flat 32-bit code
        .store(GDT + 12, 0x00CF_9A00)
        .store(GDT + 16, 0x0000_FFFF) // 0x10: flat data
        .store(GDT + 20, 0x00CF_9200)
        .store(GDTR, (GDT << 16) | 23) // limit 23, base low half
        .store(GDTR + 4, GDT >> 16)
        .store(IDTR, (IDT << 16) | (IPI_VECTOR * 8 + 7))
        .store(IDTR + 4, IDT >> 16)
        .store(IDT + IPI_VECTOR * 8, gate_low)
        .store(IDT + IPI_VECTOR * 8 + 4, gate_high)
        .lgdt(GDTR)
        .lidt(IDTR)
        .store(0xFEE0_00F0, 0x1FF) // spurious-interrupt register: the APIC software-enabled
        .sti()
}

/// A fixed IPI from an AP reaches the boot vCPU through KVM's in-kernel local APICs: the boot
/// vCPU's handler for its vector is what ends the run.
#[test]
fn an_ipi_from_an_ap_reaches_the_boot_vcpu() {
    let ap = ap_sends_ipi_to_the_boot_vcpu();
    // The handler follows the boot code; its address is known once the code's length is.
    let length = boot_starting_ap_after(boot_taking_an_ipi(0), 1, &ap).len() as u32;
    let handler_at = pvagent_host::test_images::TINY_LOAD as u32 + length;
    let mut boot = boot_starting_ap_after(boot_taking_an_ipi(handler_at), 1, &ap);
    assert_eq!(boot.len() as u32, length, "the code's length does not depend on the address");
    boot.extend_from_slice(&Code32::new().exit(AP_MARK | IPI_VECTOR));
    let r = run("smp-ipi.elf", &boot, 2, 1);
    assert_eq!(r.guest_exit_code, Some(AP_MARK | IPI_VECTOR), "{:?}", r.host_error);
    assert!(r.report.get("vcpu0.exits") >= 1, "the boot vCPU wrote the exit port");
}

/// A guest that fails on one vCPU of four, and one whose vCPUs all halt with interrupts off
/// (`cli; hlt`: each waits inside KVM for an interrupt that cannot be taken), which the time
/// limit ends: each stops the VM with the error naming its cause (the vCPU, or the limit), and
/// every vCPU thread and the watchdog's is joined: the process has as many threads after the
/// run as before it. Alone in a process, so that no other test's threads are counted.
#[test]
fn a_stopped_vm_leaves_no_thread_behind() {
    use pvagent_tests::{alone_in_a_process, thread_count};
    if !alone_in_a_process("a_stopped_vm_leaves_no_thread_behind") {
        return;
    }
    let fails = boot_starting_ap(2, &ap_triple_faults());
    // Anything the first run starts for good (none is known) is not counted as left behind.
    let _ = run("smp-threads-warm-up.elf", &fails, 4, 1);
    let before = thread_count();
    let r = run("smp-threads-fault.elf", &fails, 4, 1);
    assert!(matches!(&r.host_error, Some(Error::OnVcpu { index: 2, .. })), "{:?}", r.host_error);
    assert_eq!(thread_count(), before, "threads left behind by a VM one vCPU of which failed");
    // cli; hlt; jmp back to the hlt.
    let halts = boot_starting_ap_after(Code32::new().emit(&[0xFA]), 3, &[0xFA, 0xF4, 0xEB, 0xFD]);
    let r = run_configured("smp-threads-cli-hlt.elf", &halts, 4, 1, |c| {
        c.timeout = Some(std::time::Duration::from_secs(1));
    });
    assert!(matches!(r.host_error, Some(Error::Timeout { seconds: 1 })), "{:?}", r.host_error);
    assert_eq!(r.exit_status(), 2);
    assert_eq!(thread_count(), before, "threads left behind by a VM the time limit stopped");
}
