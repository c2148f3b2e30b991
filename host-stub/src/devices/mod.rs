//! The devices the guest needs: its console, the exit port, and the basics (the version
//! exchange, the gate it opens to the host stub's own interfaces, the basic hypercalls and the
//! milestone port);
//! and the host stub's own port for the run's timeline.
//! (The benchmark device is in `bench/`, present only when asked for.)

pub mod debug_exit;
pub mod milestone;
pub mod serial;
pub mod trace;

use pvagent_abi::hypercall::{Nr, Status};
use pvagent_abi::msr::PV_MSRS;
use pvagent_abi::port::{HOST_STUB_PORTS, MILESTONE};
use pvagent_abi::version::{GUEST_VERSION_RESERVED, MSR_GUEST_VERSION};
use pvagent_abi::{AbiVersion, PAGE_SIZE, sld};

use crate::error::{Error, Result};
use crate::handler::{ExitHandler, Handled, HypercallAnswer, MsrAnswer, Report, VcpuCtx, out_word};
use milestone::Milestones;

/// What belongs to no producer: the version exchange, the gate it opens, the basic
/// hypercalls, and the milestones of the guest's boot (`milestone.rs`).
///
/// The gate: until the guest has announced a version of this host's major, none of the host
/// stub's own interfaces is served (docs/abi.md, "Versions"). This device stands in the
/// handler list before every device and producer that serves one (the VM puts it there) and
/// answers for them: its paravirtual MSRs raise #GP, hypercalls are answered
/// [`Status::Unavailable`], its ports and MMIO pages are unclaimed. Not gated: CPUID, the
/// devices every host offers (COM1, the exit port), and the architectural MSRs a producer
/// virtualizes (MSR_TEST_CTRL, IA32_CORE_CAPABILITIES), which any guest may use.
#[derive(Debug)]
pub struct Basics {
    /// The version this host speaks.
    host_version: AbiVersion,
    /// The version the guest announced in [`MSR_GUEST_VERSION`] (`None`: not yet).
    guest_version: Option<AbiVersion>,
    pings: u64,
    /// Accesses to the host stub's own interfaces before the announcement (each refused).
    refused_before_announcement: u64,
    /// Writes to [`MSR_GUEST_VERSION`] refused with #GP: reserved bits, or a second
    /// announcement of another version.
    version_writes_refused: u64,
    milestones: Milestones,
}

impl Basics {
    /// The basics of a host that speaks ABI `host_version`.
    pub fn new(host_version: AbiVersion) -> Self {
        Self {
            host_version,
            guest_version: None,
            pings: 0,
            refused_before_announcement: 0,
            version_writes_refused: 0,
            milestones: Milestones::default(),
        }
    }

    /// The guest starts running now: milestones are timed from here.
    pub fn run_starts(&mut self, at: std::time::Instant) {
        self.milestones.run_starts(at);
    }

    /// Whether the guest's accesses to the host stub's own interfaces are served.
    fn open(&self) -> bool {
        self.guest_version.is_some()
    }

    /// Counts an access the gate refuses; `true` when it is refused (the guest has not
    /// announced), `false` when it may go on to the handler that serves it.
    fn refuse_before_announcement(&mut self) -> bool {
        if self.open() {
            return false;
        }
        self.refused_before_announcement += 1;
        true
    }
}

/// What a write of `value` to [`MSR_GUEST_VERSION`] does on a host of `host` version that was
/// told `announced` so far: the guest's version (accept it; the same one again changes
/// nothing), `None` (#GP: reserved bits, or a version other than the one announced), or the
/// error that stops the run (another major, which a guest that checked CPUID never names).
fn announcement(host: AbiVersion, announced: Option<AbiVersion>, value: u64) -> Result<Option<AbiVersion>> {
    if value & GUEST_VERSION_RESERVED != 0 {
        return Ok(None);
    }
    let guest = AbiVersion::from_raw(value as u32);
    if !host.is_compatible_with(guest) {
        return Err(Error::GuestAbiMajor { guest, host });
    }
    Ok(match announced {
        Some(first) if first != guest => None,
        _ => Some(guest),
    })
}

/// Whether MSR `index` is one of the host stub's own (the version MSR aside).
fn own_msr(index: u32) -> bool {
    PV_MSRS.contains(&index) && index != MSR_GUEST_VERSION
}

/// Whether guest-physical `addr` is on one of the host stub's own MMIO pages.
fn own_mmio(addr: u64) -> bool {
    (sld::TRIGGER_GPA..sld::TRIGGER_GPA + PAGE_SIZE).contains(&addr)
}

impl ExitHandler for Basics {
    fn name(&self) -> &'static str {
        "basics"
    }

    fn rdmsr(&mut self, _ctx: &mut VcpuCtx<'_>, index: u32) -> Result<MsrAnswer> {
        if index == MSR_GUEST_VERSION {
            return Ok(MsrAnswer::Value(self.guest_version.map_or(0, |v| u64::from(v.to_raw()))));
        }
        Ok(if own_msr(index) && self.refuse_before_announcement() { MsrAnswer::Fault } else { MsrAnswer::NotMine })
    }

    fn wrmsr(&mut self, _ctx: &mut VcpuCtx<'_>, index: u32, value: u64) -> Result<MsrAnswer> {
        if index != MSR_GUEST_VERSION {
            let refused = own_msr(index) && self.refuse_before_announcement();
            return Ok(if refused { MsrAnswer::Fault } else { MsrAnswer::NotMine });
        }
        Ok(match announcement(self.host_version, self.guest_version, value)? {
            Some(guest) => {
                self.guest_version = Some(guest);
                MsrAnswer::Value(value)
            }
            None => {
                self.version_writes_refused += 1;
                MsrAnswer::Fault
            }
        })
    }

    fn hypercall(&mut self, _ctx: &mut VcpuCtx<'_>, nr: u32, args: [u64; 4]) -> Result<HypercallAnswer> {
        if self.refuse_before_announcement() {
            return Ok(Some(Err(Status::Unavailable)));
        }
        Ok(match Nr::try_from(nr) {
            Ok(Nr::Ping) => {
                self.pings += 1;
                Some(Ok([!args[0], u64::from(self.host_version.to_raw())]))
            }
            _ => None,
        })
    }

    fn io_in(&mut self, _ctx: &mut VcpuCtx<'_>, port: u16, data: &mut [u8]) -> Result<Handled> {
        if HOST_STUB_PORTS.contains(&port) && self.refuse_before_announcement() {
            data.fill(0xFF);
            return Ok(Handled::Yes);
        }
        Ok(Handled::No)
    }

    fn io_out(&mut self, ctx: &mut VcpuCtx<'_>, port: u16, data: &[u8]) -> Result<Handled> {
        let refused = HOST_STUB_PORTS.contains(&port) && self.refuse_before_announcement();
        if !refused && port == MILESTONE {
            self.milestones.write(ctx, out_word(data));
            return Ok(Handled::Yes);
        }
        Ok(if refused { Handled::Yes } else { Handled::No })
    }

    fn mmio_read(&mut self, _ctx: &mut VcpuCtx<'_>, addr: u64, data: &mut [u8]) -> Result<Handled> {
        if own_mmio(addr) && self.refuse_before_announcement() {
            data.fill(0xFF);
            return Ok(Handled::Yes);
        }
        Ok(Handled::No)
    }

    fn mmio_write(&mut self, _ctx: &mut VcpuCtx<'_>, addr: u64, _data: &[u8]) -> Result<Handled> {
        let refused = own_mmio(addr) && self.refuse_before_announcement();
        Ok(if refused { Handled::Yes } else { Handled::No })
    }

    fn finish(&mut self, report: &mut Report) -> Result<()> {
        report.counter(self.name(), "pings", self.pings);
        report.counter(self.name(), "guest_abi_version", self.guest_version.map_or(0, |v| u64::from(v.to_raw())));
        report.counter(self.name(), "refused_before_announcement", self.refused_before_announcement);
        report.counter(self.name(), "version_writes_refused", self.version_writes_refused);
        self.milestones.finish(report);
        let guest = match self.guest_version {
            None => "not announced".to_string(),
            Some(v) => v.to_string(),
        };
        let mut line = format!("basics: host ABI {}, guest ABI {guest}", self.host_version);
        if self.refused_before_announcement > 0 {
            line += &format!(
                "; {} accesses to the host stub's own interfaces refused before an announcement",
                self.refused_before_announcement
            );
        }
        if self.version_writes_refused > 0 {
            line += &format!("; {} version writes refused", self.version_writes_refused);
        }
        report.line(line);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: AbiVersion = AbiVersion::new(1, 2);

    fn raw(v: AbiVersion) -> u64 {
        u64::from(v.to_raw())
    }

    #[test]
    fn a_guest_of_the_same_major_is_accepted_whatever_its_minor() {
        for guest in [AbiVersion::new(1, 0), AbiVersion::new(1, 2), AbiVersion::new(1, 9)] {
            assert_eq!(announcement(HOST, None, raw(guest)).unwrap(), Some(guest));
        }
    }

    #[test]
    fn a_guest_of_another_major_stops_the_run_with_both_versions() {
        let host = AbiVersion::new(1, 0);
        for (announced, guest) in
            [(None, AbiVersion::new(2, 0)), (None, AbiVersion::new(0, 1)), (Some(host), AbiVersion::new(2, 0))]
        {
            match announcement(host, announced, raw(guest)) {
                Err(Error::GuestAbiMajor { guest: g, host: h }) => {
                    assert_eq!((g, h), (guest, host));
                    let message = Error::GuestAbiMajor { guest: g, host: h }.to_string();
                    assert!(message.contains(&format!("ABI {guest}")) && message.contains("ABI 1.0"), "{message}");
                }
                other => panic!("{guest} after {announced:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn one_announcement_is_accepted_and_another_version_later_refused() {
        let first = AbiVersion::new(1, 0);
        assert_eq!(announcement(HOST, Some(first), raw(first)).unwrap(), Some(first), "the same again");
        assert_eq!(announcement(HOST, Some(first), raw(AbiVersion::new(1, 1))).unwrap(), None);
    }

    #[test]
    fn reserved_bits_are_refused_without_stopping_the_run() {
        let value = (1 << 32) | raw(AbiVersion::new(1, 0));
        assert_eq!(announcement(HOST, None, value).unwrap(), None);
    }

    #[test]
    fn the_gate_covers_the_host_stubs_own_interfaces_only() {
        use pvagent_abi::{pnp, port};
        for msr in [pnp::MSR_VECTORS, pnp::MSR_RING, pnp::MSR_DATA, 0x5056_41FF] {
            assert!(own_msr(msr), "{msr:#x}");
        }
        for msr in [MSR_GUEST_VERSION, sld::MSR_TEST_CTRL, sld::MSR_CORE_CAPABILITIES, 0x5056_4200, 0x5056_40FF] {
            assert!(!own_msr(msr), "{msr:#x}");
        }
        for p in [port::HYPERCALL, port::CONSOLE, port::TRACE, port::BENCH_INJECT, port::BENCH_NULL] {
            assert!(HOST_STUB_PORTS.contains(&p), "{p:#x}");
        }
        for p in [port::COM1, port::DEBUG_EXIT, 0x50F, 0x520] {
            assert!(!HOST_STUB_PORTS.contains(&p), "{p:#x}");
        }
        assert!(own_mmio(sld::TRIGGER_GPA) && own_mmio(sld::TRIGGER_GPA + 0xFFF));
        assert!(!own_mmio(sld::TRIGGER_GPA - 1) && !own_mmio(sld::TRIGGER_GPA + 0x1000));
    }
}
