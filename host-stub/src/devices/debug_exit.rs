//! QEMU's isa-debug-exit device on port 0xF4: a write ends the run with the written code.

use pvagent_abi::port::DEBUG_EXIT;

use crate::error::Result;
use crate::handler::{ExitHandler, Handled, Stop, VcpuCtx, out_word};

/// The exit port.
#[derive(Debug, Default)]
pub struct DebugExit;

impl ExitHandler for DebugExit {
    fn name(&self) -> &'static str {
        "debug-exit"
    }

    fn io_out(&mut self, ctx: &mut VcpuCtx<'_>, port: u16, data: &[u8]) -> Result<Handled> {
        if port != DEBUG_EXIT {
            return Ok(Handled::No);
        }
        ctx.stop = Some(Stop::GuestExit(out_word(data)));
        Ok(Handled::Yes)
    }
}
