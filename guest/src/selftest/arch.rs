//! Tests of the hardware layer: exceptions reach the right handler with the right state, the
//! page tables protect what they should, the timer ticks, the host is identified.

use pvagent_abi::report::Need;

use super::{SelfTest, TestResult};
use crate::arch::fault::{self, pf};
use crate::arch::layout::{self, Stack};
use crate::arch::{self, apic, cpu::Hypervisor, paging, percpu, stacks, time};
use crate::boot::info::MemKind;
use crate::cell::StaticCell;
use crate::pv::halt;
use crate::sync::IrqGuard;
use crate::task;
use crate::{ensure, ensure_eq, ensure_eq_hex};

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("arch::page_fault_reports_cr2_and_error_code", page_fault_reports_cr2_and_error_code),
    SelfTest::new("arch::write_to_read_only_data_faults", write_to_read_only_data_faults),
    SelfTest::new("arch::bss_was_zeroed_by_the_loader", bss_was_zeroed_by_the_loader),
    SelfTest::new("arch::stack_guard_pages_are_unmapped", stack_guard_pages_are_unmapped),
    SelfTest::new("arch::ram_is_mapped_with_large_pages", ram_is_mapped_with_large_pages),
    SelfTest::new("arch::timer_ticks", timer_ticks),
    SelfTest::new("arch::host_is_identified", host_is_identified).needs(&[Need::ExpectHost]),
    SelfTest::new("arch::hypercall_round_trip", hypercall_round_trip).needs(&[Need::HostStub]),
    SelfTest::new("arch::the_abi_version_is_announced_once", the_abi_version_is_announced_once)
        .needs(&[Need::HostStub]),
    SelfTest::new("arch::apic_mode_follows_cpuid", apic_mode_follows_cpuid),
    SelfTest::new("arch::acpi_madt_lists_the_boot_cpu", acpi_madt_lists_the_boot_cpu).needs(&[Need::Acpi]),
    // A deliberate breach, run by the end-to-end tests to show the host stops the run.
    SelfTest::on_request("arch::deliberately_announce_another_abi_major", deliberately_announce_another_abi_major)
        .needs(&[Need::HostStub]),
];

fn page_fault_reports_cr2_and_error_code() -> TestResult {
    // Page 0 is not mapped: a supervisor read of it is a not-present #PF.
    let addr = 0x18;
    let Err(f) = fault::probe_read_u64(addr) else {
        return Err(super::fail(format_args!("reading {addr:#x} did not fault")));
    };
    ensure_eq!(f.vector, 14, "vector");
    ensure_eq_hex!(f.address, addr, "CR2");
    ensure_eq_hex!(f.error_code, 0, "error code (not present, read, supervisor)");
    ensure!(f.rip != 0, "the fault reported no RIP");
    Ok(())
}

static READ_ONLY: u64 = 0x5eed;

fn write_to_read_only_data_faults() -> TestResult {
    let addr = core::ptr::addr_of!(READ_ONLY) as u64;
    let Err(f) = fault::probe_write_u64(addr, 1) else {
        return Err(super::fail(format_args!("writing .rodata at {addr:#x} did not fault")));
    };
    ensure_eq!(f.vector, 14, "vector");
    ensure_eq_hex!(f.address, addr, "CR2");
    ensure_eq_hex!(f.error_code, pf::PRESENT | pf::WRITE, "error code (present, write, supervisor)");
    // SAFETY: a plain read of a static.
    let still = unsafe { core::ptr::read_volatile(&READ_ONLY) };
    ensure_eq_hex!(still, 0x5eed, "the read-only value");
    Ok(())
}

/// Zero-initialised, so in `.bss`, and never written: what the loader left there.
static NEVER_WRITTEN: StaticCell<[u64; 64]> = StaticCell::new([0; 64]);

/// The kernel does not clear `.bss` (`boot::entry`): the loader must have, as ELF says for a
/// segment's bytes beyond its file contents. Memory the host leaves as it was (a loader that
/// copies only the file, on memory that is not fresh) shows here.
fn bss_was_zeroed_by_the_loader() -> TestResult {
    let words = NEVER_WRITTEN.get().cast::<u64>();
    for i in 0..64 {
        // SAFETY: inside the static, which nothing writes; volatile, so that the compiler,
        // which knows its initial value, still reads the memory.
        let word = unsafe { core::ptr::read_volatile(words.add(i)) };
        ensure_eq_hex!(word, 0, "word {i} of a .bss static at {:#x}", words as u64);
    }
    Ok(())
}

/// The guard page below a stack faults as not present; the stack itself (its first and last
/// word) reads.
fn check_stack(what: &str, stack: Stack, mapped: bool) -> TestResult {
    match fault::probe_read_u64(stack.guard + 8) {
        Err(f) => {
            ensure_eq!(f.vector, 14, "vector of a read of the guard page of {what}");
            ensure_eq!(f.error_code & pf::PRESENT, 0, "present bit of the guard page of {what}");
        }
        Ok(_) => return Err(super::fail(format_args!("the guard page of {what} at {:#x} is mapped", stack.guard))),
    }
    if mapped {
        ensure!(fault::probe_read_u64(stack.bottom()).is_ok(), "the bottom of {what} is not mapped");
        ensure!(fault::probe_read_u64(stack.top - 8).is_ok(), "the top of {what} is not mapped");
    }
    Ok(())
}

fn stack_guard_pages_are_unmapped() -> TestResult {
    let cpu = percpu::index();
    let area = stacks::area();
    let boot_guard = paging::image_layout().boot_stack_guard;
    let boot_top = boot_guard + layout::PAGE + crate::boot::entry::BOOT_STACK_SIZE as u64;
    check_stack("the boot stack", Stack { guard: boot_guard, top: boot_top }, true)?;
    for i in 0..area.demand().ist_per_cpu {
        check_stack("an IST stack", area.ist(cpu, i), true)?;
    }
    let mut used = 0;
    for slot in 0..area.demand().tasks_per_cpu {
        let mapped = task::stacks_mapped(slot as u16);
        used += usize::from(mapped.kernel);
        let stack = area.task(cpu, slot);
        check_stack("a task stack", stack, mapped.kernel)?;
        ensure_eq!(stack.top - stack.bottom(), area.demand().task_size, "the size of task stack {slot}");
        let user = area.user(cpu, slot);
        check_stack("a user stack", user, mapped.user)?;
        ensure_eq!(user.top - user.bottom(), area.demand().user_size, "the size of user stack {slot}");
    }
    ensure!(used >= 1, "not even this test's own task stack is mapped");
    Ok(())
}

/// Every piece of RAM the memory map lists is mapped where it fills whole 2 MiB pages (its first
/// and last such page read), with pages of at least 2 MiB, except what the kernel keeps out on
/// purpose (page 0's and the image's 2 MiB, which 4 KiB pages map as the image needs, and the
/// stack area, mapped as stacks are used).
fn ram_is_mapped_with_large_pages() -> TestResult {
    let memory = &arch::platform().memory;
    let image = paging::image_layout();
    let large = layout::LARGE_PAGE;
    let held_back = |page: u64| {
        page < image.end.next_multiple_of(large) || (memory.stacks.start()..memory.stacks.end()).contains(&page)
    };
    let ram = || crate::boot::info::get().memmap.ranges.iter().filter(|r| r.kind == MemKind::Ram);
    let mut checked = 0;
    for r in ram() {
        let (first, last) = (r.start.next_multiple_of(large), (r.end & !(large - 1)).saturating_sub(large));
        // Its first and last whole 2 MiB page, and the first one after the stack area.
        let after_stacks = memory.stacks.end().clamp(first, last);
        for page in [first, after_stacks, last] {
            if first > last || held_back(page) {
                continue;
            }
            let size = paging::page_size(page).unwrap_or(0);
            ensure!(
                size >= large && fault::probe_read_u64(page).is_ok(),
                "RAM at {page:#x} (in {:#x}..{:#x}) is mapped with {size:#x}-byte pages",
                r.start,
                r.end
            );
            checked += 1;
        }
    }
    ensure!(checked >= 2, "the memory map lists almost no RAM in whole 2 MiB pages ({checked} checked)");
    Ok(())
}

fn timer_ticks() -> TestResult {
    // Checked by its programming and by ticks arriving, never by the time they take: a busy
    // host delays ticks, and some hosts (QEMU TCG) then deliver the missed ones in a burst, so
    // neither an upper nor a lower bound on elapsed time holds on every machine.
    let setting = apic::timer_setting();
    let expected = apic::TimerSetting {
        vector: arch::TIMER_VECTOR,
        periodic: true,
        masked: false,
        period: arch::tick_period(),
        divide_by_1: true,
    };
    ensure_eq!(setting, expected, "the timer's programming (HZ {})", time::HZ);
    ensure!(setting.period > 0, "a zero period: the timer would never tick");
    // Three ticks, waited for by halting (each tick wakes the vCPU). The deadline only turns a
    // timer that never ticks into a failure instead of a hang.
    let deadline_ns = time::now_ns() + 10_000_000_000;
    let target = arch::ticks() + 3;
    {
        let _irq = IrqGuard::new();
        halt::wait_until(|| (arch::ticks() >= target || time::now_ns() > deadline_ns).then_some(()));
    }
    ensure!(
        arch::ticks() >= target,
        "the timer is not ticking: {} of 3 ticks in ten seconds",
        arch::ticks() + 3 - target
    );
    Ok(())
}

fn host_is_identified() -> TestResult {
    let boot = crate::boot::info::get();
    let Some(expected) = boot.cmdline.get("expect-host") else {
        return Err(super::fail(format_args!("no expect-host= on the command line (the runner checked it)")));
    };
    let found = arch::platform().hypervisor;
    let matches = match expected {
        "stub" => {
            matches!(found, Hypervisor::HostStub { abi_version, .. } if abi_version == pvagent_abi::ABI_VERSION)
        }
        "kvm" => matches!(found, Hypervisor::Kvm { .. }),
        "tcg" => found == Hypervisor::QemuTcg,
        other => return Err(super::fail(format_args!("unknown expect-host={other}"))),
    };
    ensure!(matches, "expected host {expected}, found {found:?}");
    Ok(())
}

fn hypercall_round_trip() -> TestResult {
    let arg = 0x0123_4567_89ab_cdef;
    let ret = arch::hypercall::call(pvagent_abi::hypercall::Nr::Ping, [arg, 0, 0, 0])
        .map_err(|e| super::fail(format_args!("ping failed: {e:?}")))?;
    ensure_eq_hex!(ret[0], !arg, "ping answer: the argument inverted");
    ensure_eq_hex!(ret[1], u64::from(pvagent_abi::ABI_VERSION.to_raw()), "ping answer: the host's ABI version");
    Ok(())
}

fn apic_mode_follows_cpuid() -> TestResult {
    let p = arch::platform();
    let expected = if p.cpu.x2apic { apic::Mode::X2Apic } else { apic::Mode::XApic };
    ensure_eq!(apic::mode(), expected, "APIC mode for CPUID x2APIC={}", p.cpu.x2apic);
    ensure_eq!(apic::id(), percpu::apic_id(), "APIC ID read now vs at boot");
    Ok(())
}

fn acpi_madt_lists_the_boot_cpu() -> TestResult {
    let p = arch::platform();
    let Some(madt) = p.madt else {
        return Err(super::fail(format_args!("the host gave an RSDP but the MADT could not be read")));
    };
    ensure!(madt.cpus >= 1, "the MADT lists no usable CPU");
    let listed = madt.ids();
    ensure!(listed.contains(&p.boot_apic_id), "boot APIC ID {} not among {listed:?}", p.boot_apic_id);
    Ok(())
}

/// Boot announced this guest's version (`pv::init`); the host keeps that one: the same again
/// is accepted, another minor raises #GP and changes nothing.
fn the_abi_version_is_announced_once() -> TestResult {
    use pvagent_abi::{ABI_VERSION, AbiVersion, version::MSR_GUEST_VERSION};
    use x86_64::registers::model_specific::Msr;
    let ours = u64::from(ABI_VERSION.to_raw());
    // SAFETY: every host stub serves this MSR (the host was identified as one); reading it
    // changes nothing.
    let read = || unsafe { Msr::new(MSR_GUEST_VERSION).read() };
    ensure_eq_hex!(read(), ours, "the version boot announced");
    ensure!(fault::probe_write_msr(MSR_GUEST_VERSION, ours).is_ok(), "the same version again was refused");
    let other = AbiVersion::new(ABI_VERSION.major, ABI_VERSION.minor.wrapping_add(1));
    let rewrite = fault::probe_write_msr(MSR_GUEST_VERSION, u64::from(other.to_raw()));
    ensure!(
        matches!(rewrite, Err(f) if f.vector == 13),
        "a second announcement, {other}, was not refused: {rewrite:?}"
    );
    ensure_eq_hex!(read(), ours, "the version after a refused second announcement");
    Ok(())
}

/// Announces a version of the next major, which a guest that read the host's version never
/// does: the host must stop the run with an error naming both versions.
fn deliberately_announce_another_abi_major() -> TestResult {
    use pvagent_abi::{ABI_VERSION, AbiVersion, version::MSR_GUEST_VERSION};
    let other = AbiVersion::new(ABI_VERSION.major.wrapping_add(1), 0);
    let written = fault::probe_write_msr(MSR_GUEST_VERSION, u64::from(other.to_raw()));
    Err(super::fail(format_args!("the host let the guest announce ABI {other} and run on ({written:?})")))
}
