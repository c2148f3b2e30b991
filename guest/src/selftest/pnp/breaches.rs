//! Deliberate breaches, run by the end-to-end tests to show the host stops the run.

use super::*;

/// Leaves a task parked on a token of a page the host holds until it is released, and ends the
/// run without releasing it: the host must count the token as leaked and fail the run.
pub(super) fn deliberately_leak_a_token() -> TestResult {
    fn reader(gpa: u64) -> u64 {
        read(gpa)
    }
    let region = pager()?;
    let gpa = fresh_pages(&region, 1)?;
    // Held and never released: the token stays outstanding (deliberately no `Held` guard).
    pnp::set_page_behaviour(gpa, PageBehaviour::Held).map_err(|e| fail(format_args!("hold: {e:?}")))?;
    spawned(task::spawn_kernel("pnp-leaker", reader, gpa))?;
    yield_until_parked(1)?;
    ensure_eq!(pnp::pending().0, 1, "tokens waiting");
    Ok(())
}

/// Publishes a ring `tail` beyond what the host produced, then touches an absent page: the
/// host must refuse to go on with a broken ring and stop the guest with a report.
pub(super) fn deliberately_corrupt_the_ring_tail() -> TestResult {
    let region = pager()?;
    latency(1_000, 1_000)?;
    let gpa = fresh_pages(&region, 1)?;
    pnp::corrupt_ring_tail(1000);
    ensure_eq_hex!(read(gpa), backing_pattern(gpa), "data");
    Err(fail(format_args!("the host accepted a ring tail beyond its head")))
}

/// Reads the first page of the region (the end-to-end tests configure it to fail).
pub(super) fn touch_the_first_page() -> TestResult {
    let region = pager()?;
    let value = read(region.page(0));
    Err(fail(format_args!("read {value:#x} from page 0, which the host was told to fail")))
}

/// Fails the first page of the region (the end-to-end tests configure it to fail) with a task
/// that touches it, then touches it again with interrupts off: no event can carry "failed"
/// there, and seed 001's answer without a fault into the guest is that the host stops the run,
/// naming the page.
pub(super) fn touch_a_failed_page_again_with_interrupts_off() -> TestResult {
    let region = pager()?;
    let gpa = region.page(0);
    let toucher = spawned(task::spawn_user("pnp-first-touch", user_read_two_words, gpa))?;
    match join(toucher)? {
        ExitStatus::Killed(reason) if pnp::PageFailed::from_reason(&reason).is_some() => {}
        other => return Err(fail(format_args!("the first touch of the failing page ended with {other:?}"))),
    }
    let value = {
        let _irq = IrqGuard::new();
        read(gpa)
    };
    Err(fail(format_args!("read {value:#x} from a failed page with interrupts off: the run went on")))
}
