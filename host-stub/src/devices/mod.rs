//! The devices the guest needs: its console, the exit port, and the basics (the version
//! exchange and the basic hypercalls); and the host stub's own port for the run's timeline.
//! (The benchmark device is in `bench/`, present only when asked for.)

pub mod debug_exit;
pub mod serial;
pub mod trace;

use pvagent_abi::AbiVersion;
use pvagent_abi::hypercall::Nr;
use pvagent_abi::version::{GUEST_VERSION_RESERVED, MSR_GUEST_VERSION};

use crate::error::{Error, Result};
use crate::handler::{ExitHandler, HypercallAnswer, MsrAnswer, Report, VcpuCtx};

/// What belongs to no producer: learning the guest's ABI version, and the basic hypercalls.
#[derive(Debug)]
pub struct Basics {
    /// The version this host speaks.
    host_version: AbiVersion,
    /// The last value the guest wrote to [`MSR_GUEST_VERSION`] (0: none yet).
    guest_version_msr: u64,
    pings: u64,
}

impl Basics {
    /// The basics of a host that speaks ABI `host_version`.
    pub fn new(host_version: AbiVersion) -> Self {
        Self { host_version, guest_version_msr: 0, pings: 0 }
    }
}

/// What a write of `value` to [`MSR_GUEST_VERSION`] means to a host of `host` version: the
/// guest's version (accept it), `None` (reserved bits: #GP), or the error that stops the run (a
/// guest of another major announced itself, which a guest that checked CPUID never does).
fn guest_version(host: AbiVersion, value: u64) -> Result<Option<AbiVersion>> {
    if value & GUEST_VERSION_RESERVED != 0 {
        return Ok(None);
    }
    let guest = AbiVersion::from_raw(value as u32);
    if !host.is_compatible_with(guest) {
        return Err(Error::GuestAbiMajor { guest, host });
    }
    Ok(Some(guest))
}

impl ExitHandler for Basics {
    fn name(&self) -> &'static str {
        "basics"
    }

    fn rdmsr(&mut self, _ctx: &mut VcpuCtx<'_>, index: u32) -> Result<MsrAnswer> {
        Ok(if index == MSR_GUEST_VERSION { MsrAnswer::Value(self.guest_version_msr) } else { MsrAnswer::NotMine })
    }

    fn wrmsr(&mut self, _ctx: &mut VcpuCtx<'_>, index: u32, value: u64) -> Result<MsrAnswer> {
        if index != MSR_GUEST_VERSION {
            return Ok(MsrAnswer::NotMine);
        }
        Ok(match guest_version(self.host_version, value)? {
            Some(_) => {
                self.guest_version_msr = value;
                MsrAnswer::Value(value)
            }
            None => MsrAnswer::Fault,
        })
    }

    fn hypercall(&mut self, _ctx: &mut VcpuCtx<'_>, nr: u32, args: [u64; 4]) -> Result<HypercallAnswer> {
        Ok(match Nr::try_from(nr) {
            Ok(Nr::Ping) => {
                self.pings += 1;
                Some(Ok([!args[0], u64::from(self.host_version.to_raw())]))
            }
            _ => None,
        })
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        report.counter(self.name(), "pings", self.pings);
        report.counter(self.name(), "guest_abi_version", self.guest_version_msr);
        let guest = match self.guest_version_msr {
            0 => "not announced".to_string(),
            raw => AbiVersion::from_raw(raw as u32).to_string(),
        };
        report.line(format!("basics: host ABI {}, guest ABI {guest}", self.host_version));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_of_the_same_major_is_accepted_whatever_its_minor() {
        let host = AbiVersion::new(1, 2);
        for guest in [AbiVersion::new(1, 0), AbiVersion::new(1, 2), AbiVersion::new(1, 9)] {
            assert_eq!(guest_version(host, u64::from(guest.to_raw())).unwrap(), Some(guest));
        }
    }

    #[test]
    fn a_guest_of_another_major_stops_the_run_with_both_versions() {
        let host = AbiVersion::new(1, 0);
        for guest in [AbiVersion::new(2, 0), AbiVersion::new(0, 1)] {
            match guest_version(host, u64::from(guest.to_raw())) {
                Err(Error::GuestAbiMajor { guest: g, host: h }) => {
                    assert_eq!((g, h), (guest, host));
                    let message = Error::GuestAbiMajor { guest: g, host: h }.to_string();
                    assert!(message.contains(&format!("ABI {guest}")) && message.contains("ABI 1.0"), "{message}");
                }
                other => panic!("{guest}: {other:?}"),
            }
        }
    }

    #[test]
    fn reserved_bits_are_refused_without_stopping_the_run() {
        let value = (1 << 32) | u64::from(AbiVersion::new(1, 0).to_raw());
        assert_eq!(guest_version(AbiVersion::new(1, 0), value).unwrap(), None);
    }
}
