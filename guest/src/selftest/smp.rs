//! Tests of several vCPUs: every processor the MADT lists is started and runs on its own
//! tables, APIC and timer. With one vCPU they check the one-vCPU case (nothing to start, nothing
//! failed), so they run on every host.

use super::{SelfTest, TestResult};
use crate::arch::{self, apic, percpu, smp, time};
use crate::pv::halt;
use crate::sync::IrqGuard;
use crate::task::remote;
use crate::{ensure, ensure_eq};

pub const TESTS: &[SelfTest] = &[
    SelfTest::new("smp::every_madt_cpu_is_online", every_madt_cpu_is_online),
    SelfTest::new("smp::every_cpu_takes_its_own_timer_ticks", every_cpu_takes_its_own_timer_ticks),
    SelfTest::new("smp::a_task_runs_on_the_cpu_it_was_placed_on", a_task_runs_on_the_cpu_it_was_placed_on),
];

/// Every usable processor of the MADT (up to `MAX_CPUS`) has a dense index and came online;
/// none failed, and none was left out.
fn every_madt_cpu_is_online() -> TestResult {
    let p = arch::platform();
    let map = &p.cpus;
    ensure_eq!(map.apic_id(0), Some(p.boot_apic_id), "index 0 is the boot vCPU");
    if let Some(madt) = p.madt {
        for id in madt.ids() {
            ensure!(map.index_of(*id).is_some(), "the MADT's APIC ID {id} has no vCPU index: {:?}", map.ids());
        }
        ensure_eq!(map.count(), (madt.cpus as usize).min(arch::MAX_CPUS), "vCPUs used of those the MADT lists");
    }
    ensure_eq!(smp::failed_mask(), 0, "vCPUs that did not come online (by index)");
    for cpu in 0..map.count() {
        ensure!(smp::is_online(cpu), "vCPU {cpu} (APIC ID {:?}) is not online", map.apic_id(cpu));
    }
    ensure_eq!(smp::online_count(), map.count(), "vCPUs online");
    Ok(())
}

/// Each vCPU's timer ticks on that vCPU: its tick count, which only its own timer's handler
/// increments, grows by 3. Waited for by halting (the boot vCPU's own ticks wake it to look);
/// the deadline only turns a dead timer into a failure instead of a hang.
fn every_cpu_takes_its_own_timer_ticks() -> TestResult {
    let cpus = arch::platform().cpus.count();
    let targets: heapless::Vec<u64, { arch::MAX_CPUS }> = (0..cpus).map(|cpu| time::ticks_of(cpu) + 3).collect();
    let deadline_ns = time::now_ns() + 10_000_000_000;
    let all_ticked = || (0..cpus).all(|cpu| time::ticks_of(cpu) >= targets[cpu]);
    {
        let _irq = IrqGuard::new();
        halt::wait_until(|| (all_ticked() || time::now_ns() > deadline_ns).then_some(()));
    }
    for (cpu, target) in targets.iter().enumerate() {
        let seen = time::ticks_of(cpu) + 3 - target;
        ensure!(seen >= 3, "vCPU {cpu}'s timer is not ticking: {seen} of 3 ticks in ten seconds");
    }
    Ok(())
}

/// A task placed on each vCPU in turn (the running one included) runs there: it reports the
/// vCPU index and the APIC ID it finds, which must be that vCPU's by the CPU map. Joined from
/// here: the result comes back across vCPUs, and the task's slot is freed on its own vCPU.
fn a_task_runs_on_the_cpu_it_was_placed_on() -> TestResult {
    fn where_am_i(tag: u64) -> u64 {
        (tag << 48) | ((percpu::index() as u64) << 32) | u64::from(apic::id())
    }
    let map = &arch::platform().cpus;
    for round in 0..2u64 {
        for cpu in 0..map.count() {
            let placed = remote::spawn_kernel_on(cpu, "placed", where_am_i, round)
                .map_err(|e| super::fail(format_args!("placing a task on vCPU {cpu}: {e:?}")))?;
            let seen = placed.join().map_err(|e| super::fail(format_args!("the task on vCPU {cpu}: {e:?}")))?;
            ensure_eq!(seen >> 48, round, "the task's own argument, round {round}");
            ensure_eq!((seen >> 32) & 0xFFFF, cpu as u64, "the vCPU index the placed task ran on");
            ensure_eq!(Some(seen as u32), map.apic_id(cpu), "the APIC ID the task on vCPU {cpu} read");
        }
    }
    Ok(())
}
