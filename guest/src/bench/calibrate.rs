//! What the benchmarks' loops cost by themselves, measured once per run so that it can be taken
//! out of every figure: the empty kernel loop around the timed `out`s, and the CPL 3 compute loop
//! the workloads spin in. Also the one time conversion they all use.

use pvagent_abi::port::BenchCount;
use pvagent_guest::arch::time;
use pvagent_guest::kprintln;
use pvagent_guest::task::{self, table::ExitStatus};

use crate::count::{self, Counts, TickHeld};
use crate::user::{self, EMPTY_SLOT, Slot};
use crate::{BenchError, Result};

/// TSC cycles in ns, at the TSC frequency the kernel found.
pub fn cycles_to_ns(cycles: u64) -> u64 {
    (u128::from(cycles) * 1_000_000 / u128::from(time::tsc_khz().max(1))) as u64
}

/// What the timed loop costs without its `out`: a `dec`/`jnz` pair per iteration, which this
/// machine's KVM emulates at CPL 0. Measured several times at the start of the run and the
/// median kept, so that one noisy measurement does not land in every figure.
#[derive(Clone, Copy, Debug)]
pub struct EmptyLoop {
    /// TSC cycles per 1024 iterations.
    cycles_per_1024: u64,
}

impl EmptyLoop {
    const ITERATIONS: u64 = 2000;
    const SAMPLES: usize = 7;

    /// Measures the empty loop and prints each measurement (two kernel instructions per
    /// iteration: what one guest kernel instruction costs here).
    pub fn measure() -> Self {
        let mut samples = [0u64; Self::SAMPLES];
        for (rep, sample) in samples.iter_mut().enumerate() {
            *sample = timed_loop(None, Self::ITERATIONS);
            kprintln!("bench: kernel_insn rep={rep} ops={} total_ns={}", 2 * Self::ITERATIONS, cycles_to_ns(*sample));
        }
        samples.sort_unstable();
        Self { cycles_per_1024: samples[Self::SAMPLES / 2] * 1024 / Self::ITERATIONS }
    }

    fn cycles(&self, iterations: u64) -> u64 {
        self.cycles_per_1024 * iterations / 1024
    }
}

/// TSC cycles of `iterations` (at least 1) rounds of a tight kernel loop, with a 32-bit `out`
/// of the value to the port in each round when there is one, inside a counting window
/// (`count.rs`). Interrupts stay enabled: an injected interrupt is taken inside the loop, as it
/// would be after any exit.
///
/// One `asm!` from the window's opening `out` to its closing one, so that no compiler-made code
/// is inside it, and both kinds of loop execute the same instructions around their rounds (a
/// test, a taken or untaken branch, a jump): the count of a loop with `out`s less that of the
/// same number of empty rounds is exactly what its `out`s and their events cost.
fn timed_loop(out: Option<(u16, u32)>, iterations: u64) -> u64 {
    let (port, value) = out.unwrap_or((0, 0));
    let (start, end): (u64, u64);
    // SAFETY: the host's bench ports have no effect on guest memory. Not `nomem`: the host
    // injects events on the way back, whose handlers change memory the caller then reads.
    unsafe {
        core::arch::asm!(
            "mov edx, {count_port}",
            "mov eax, {open}",
            "out dx, eax",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov {start}, rax",
            "mov edx, {port:e}",
            "mov eax, {value:e}",
            "test {with_out}, {with_out}",
            "jnz 3f",
            "2: dec {n}",
            "jnz 2b",
            "jmp 4f",
            "3: out dx, eax",
            "dec {n}",
            "jnz 3b",
            "jmp 4f",
            "4: rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov {end}, rax",
            "mov edx, {count_port}",
            "mov eax, {close}",
            "out dx, eax",
            count_port = const pvagent_abi::port::BENCH_COUNT as u32,
            open = const BenchCount::Open as u32,
            close = const BenchCount::Close as u32,
            port = in(reg) u32::from(port),
            value = in(reg) value,
            with_out = in(reg) u64::from(out.is_some()),
            n = inout(reg) iterations.max(1) => _,
            start = out(reg) start,
            end = out(reg) end,
            out("rax") _,
            out("rdx") _,
            options(nostack),
        );
    }
    end.wrapping_sub(start)
}

/// TSC cycles of `iterations` `out`s of `value` to `port`, the loop's own cost taken out.
pub fn port_loop(port: u16, value: u32, iterations: u64, empty: EmptyLoop) -> u64 {
    timed_loop(Some((port, value)), iterations).saturating_sub(empty.cycles(iterations))
}

/// What a counted loop measured.
#[derive(Clone, Copy, Debug)]
pub struct Counted {
    /// TSC cycles, the empty loop's cost taken out (as [`port_loop`]).
    pub cycles: u64,
    /// What KVM counted for the `out`s and their events: the loop's window less the window of
    /// the same number of empty rounds, counted right after it. `None` where the host does not
    /// count.
    pub counts: Option<Counts>,
}

/// [`port_loop`], counted: with the tick held back around both windows, so the difference is
/// exactly what the `out`s and the events they bring cost.
pub fn counted_port_loop(port: u16, value: u32, iterations: u64, empty: EmptyLoop) -> Result<Counted> {
    let _tick = TickHeld::new();
    let cycles = port_loop(port, value, iterations, empty);
    let looped = count::read();
    timed_loop(None, iterations);
    let counts = looped.zip(count::read()).map(|(looped, empty)| looped.less(empty)).transpose()?;
    Ok(Counted { cycles, counts })
}

/// How long `spin` (`user.rs`) takes per 1024 iterations, in TSC cycles: the fastest of a few
/// timed runs of a CPL 3 task (an interrupt can only make a run slower).
pub fn spin_cycles_per_1024() -> Result<u64> {
    const ITERATIONS: u64 = 1 << 20;
    let mut best = u64::MAX;
    for _ in 0..3 {
        user::set_slot(0, Slot { spin_iterations: ITERATIONS, ..EMPTY_SLOT })?;
        let addr = user::slot_addr(0).ok_or(BenchError("no slot"))?;
        let id = task::spawn_user("bench-spin", user::user_spin_timed, addr).map_err(|_| BenchError("spawn failed"))?;
        match crate::join(id)? {
            ExitStatus::Returned(cycles) => best = best.min(cycles),
            _ => return Err(BenchError("the calibration task ended abnormally")),
        }
    }
    Ok((best * 1024 / ITERATIONS).max(1))
}

/// `spin` iterations for `ns` of compute.
pub fn spin_iterations(ns: u64, cycles_per_1024: u64) -> u64 {
    let cycles = u128::from(ns) * u128::from(time::tsc_khz()) / 1_000_000;
    (cycles * 1024 / u128::from(cycles_per_1024)) as u64
}
