//! The benchmark kernel, `pvagent-bench`: the pvagent kernel (`pvagent_guest`, booted the same
//! way as the product) with the benchmarks `cargo xtask bench` runs in the guest as its first
//! task instead of the self-tests. A binary of its own, so that none of this code is in the
//! product kernel. It needs the host stub's benchmark device (`pvagent-host --bench`).
//!
//! `bench=NAME[,NAME...]` on the command line names the benchmarks (`bench=all` by default); each
//! prints one `bench: NAME key=value ...` line per measurement (`pvagent_abi::report::parse_bench`
//! reads them back); the host turns them into medians, ratios and plots.
//!
//! On the PVM `/dev/kvm` of these machines the guest kernel's instructions are emulated and CPL 3
//! code runs natively, and port I/O is not possible at CPL 3 there. So exits are timed from a
//! tight kernel loop, minus what the loop itself costs (measured once per run, see
//! `calibrate::EmptyLoop`): what is left is the exit round trip (and the injected event's
//! handling). Costs that are compared with the round trip carry the round trip measured right
//! next to them, because this machine's speed drifts. Workloads compute at CPL 3 and time
//! themselves from inside their tasks, so that creating and joining tasks is not part of what
//! they measure.
//!
//! | file | role |
//! | --- | --- |
//! | `runner.rs` | the first task: settings from the command line, dispatch, the verdict |
//! | `calibrate.rs` | what the loops cost by themselves (the empty kernel loop, the CPL 3 compute loop); the timed, counted loop |
//! | `count.rs` | counting windows: what KVM counted (emulated instructions, exits) around a loop |
//! | `io.rs` | the baseline: the null port in the host stub's loop and in its bare loop |
//! | `inject.rs` | an interrupt, an #AC, a resolved page-not-present event per exit |
//! | `pnp.rs` | the page-not-present round trip on each path, each forced |
//! | `workload.rs` | timed runs of CPL 3 tasks over absent pages; the workload benchmark |
//! | `scaling.rs` | handling time per event against tokens outstanding |
//! | `smp.rs` | the ring-mode workload spread over every online vCPU |
//! | `pager.rs` | the pager's settings and counters, as the benchmarks steer it |
//! | `user.rs` | the CPL 3 side: the tasks' slots and finish line, the user programs |

#![cfg_attr(kernel, no_std, no_main)]

#[cfg(kernel)]
mod calibrate;
#[cfg(kernel)]
mod count;
#[cfg(kernel)]
mod inject;
#[cfg(kernel)]
mod io;
#[cfg(kernel)]
mod pager;
#[cfg(kernel)]
mod pnp;
#[cfg(kernel)]
mod runner;
#[cfg(kernel)]
mod scaling;
#[cfg(kernel)]
mod smp;
#[cfg(kernel)]
mod user;
#[cfg(kernel)]
mod workload;

#[cfg(kernel)]
use runner::{BenchError, Result, Settings, join};

/// Called by the PVH entry (`boot::entry`) in long mode, on the boot stack, with interrupts
/// disabled and the boot page tables active.
#[cfg(kernel)]
#[unsafe(no_mangle)]
extern "sysv64" fn kernel_main(start_info_paddr: u32) -> ! {
    let first = pvagent_guest::start::FirstTask { name: "bench", run: runner::run, cmdline_keys: runner::CMDLINE_KEYS };
    // SAFETY: called once, by the PVH entry, in the state `boot` requires (above).
    unsafe { pvagent_guest::start::boot(start_info_paddr, first) }
}

#[cfg(not(kernel))]
fn main() {
    eprintln!("pvagent-bench is a kernel for x86_64-unknown-none; `cargo xtask bench` boots it");
    std::process::exit(2);
}
