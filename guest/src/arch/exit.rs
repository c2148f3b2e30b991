//! Ending the run: the isa-debug-exit protocol shared by QEMU and the host stub.

use x86_64::instructions::port::Port;

/// Writes `code` to the debug-exit port. Both hosts stop the vCPU there; should a host not
/// implement the port, the vCPU halts with interrupts off forever and the host's timeout ends
/// the run.
pub fn exit(code: u32) -> ! {
    // SAFETY: writing the debug-exit port has no effect on the guest's memory.
    unsafe { Port::<u32>::new(pvagent_abi::port::DEBUG_EXIT).write(code) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
