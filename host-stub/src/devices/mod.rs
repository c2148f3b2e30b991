//! The devices the guest needs: its console, the exit port, and the basic hypercalls; and the
//! host stub's own port for the run's timeline. (The benchmark device is in `bench/`, present
//! only when asked for.)

pub mod debug_exit;
pub mod serial;
pub mod trace;

use pvagent_abi::hypercall::{Nr, Status};

use crate::handler::{ExitHandler, VcpuCtx};

/// Hypercalls that belong to no producer.
#[derive(Debug, Default)]
pub struct BasicHypercalls {
    pings: u64,
}

impl ExitHandler for BasicHypercalls {
    fn name(&self) -> &'static str {
        "hypercall"
    }

    fn hypercall(&mut self, _ctx: &mut VcpuCtx<'_>, nr: u32, args: [u64; 4]) -> Option<Result<[u64; 2], Status>> {
        match Nr::try_from(nr) {
            Ok(Nr::Ping) => {
                self.pings += 1;
                Some(Ok([!args[0], u64::from(pvagent_abi::ABI_VERSION)]))
            }
            _ => None,
        }
    }

    fn finish(&mut self, report: &mut crate::handler::Report) -> crate::error::Result<()> {
        report.counter(self.name(), "pings", self.pings);
        Ok(())
    }
}
