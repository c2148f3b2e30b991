//! Typed access to the two split-lock MSRs. A [`TestCtrl`] exists only once enumeration said
//! the MSR and its detection bit exist, so the code above it cannot write the MSR on a CPU that
//! lacks it. Both are accessed with probes: a host may promise an MSR through the CPUID chain
//! and still fault on it (`pvagent_abi::breach`, 0x500..), which the guest counts and reports
//! instead of crashing.

use pvagent_abi::breach::Breach;
use pvagent_abi::cpuid::Features;
use pvagent_abi::sld;

use super::policy::Enumeration;

use crate::arch::cpu;
use crate::arch::fault::{self, Fault};
use crate::kreport;
use crate::pv::breach;

/// Follows the architectural enumeration: CPUID.(7,0):EDX bit 30 (or the host stub's
/// repetition of it), then IA32_CORE_CAPABILITIES. A read that faults though the chain promised
/// the MSR ends the chain there (no detection: nothing promised it then); a value with reserved
/// bits set is reported, and its bit 5 still followed (MSR_TEST_CTRL is checked
/// when it is first written, `kernel::apply_mode_here`).
pub fn enumerate() -> Enumeration {
    let edx = cpu::cpuid(sld::CPUID_LEAF, sld::CPUID_SUBLEAF).edx;
    let host_says = crate::arch::platform().hypervisor.host_features().has(Features::CORE_CAPABILITIES);
    Enumeration::probe(edx, host_says, || match fault::probe_read_msr(sld::MSR_CORE_CAPABILITIES) {
        Ok(value) => {
            if value & !sld::CORE_CAPS_DEFINED != 0 && breach::note(Breach::CoreCapabilitiesGarbage, value, 0) {
                kreport!(
                    "ac: IA32_CORE_CAPABILITIES reads {value:#x}, reserved bits (63:9) set (host broke {}); following its bit 5",
                    Breach::CoreCapabilitiesGarbage
                );
            }
            value
        }
        Err(f) => {
            if breach::note(Breach::CoreCapabilitiesFaults, f.error_code, 0) {
                kreport!(
                    "ac: IA32_CORE_CAPABILITIES raised {f} though CPUID promised it (host broke {}): split-lock detection not used",
                    Breach::CoreCapabilitiesFaults
                );
            }
            0
        }
    })
}

/// MSR_TEST_CTRL, known to have its split-lock detection bit.
#[derive(Clone, Copy, Debug)]
pub struct TestCtrl(());

impl TestCtrl {
    /// The register, if enumeration says its detection bit exists.
    pub fn new(enumeration: Enumeration) -> Option<Self> {
        enumeration.available().then_some(TestCtrl(()))
    }

    /// The raw value; a #GP from a host that promised the MSR is an error.
    pub fn read(self) -> Result<u64, Fault> {
        fault::probe_read_msr(sld::MSR_TEST_CTRL)
    }

    /// Whether detection is on, as the register says (`None`: it faulted).
    pub fn detection_on(self) -> Option<bool> {
        self.read().ok().map(|v| v & sld::TEST_CTRL_SPLIT_LOCK_DETECT != 0)
    }

    /// Turns detection on or off, keeping every other bit as it is.
    pub fn set_detection(self, on: bool) -> Result<(), Fault> {
        let old = self.read()?;
        let new = if on { old | sld::TEST_CTRL_SPLIT_LOCK_DETECT } else { old & !sld::TEST_CTRL_SPLIT_LOCK_DETECT };
        // Only the enumerated detection bit changes; detection affects only which locked
        // accesses raise #AC, which the #AC handler serves.
        fault::probe_write_msr(sld::MSR_TEST_CTRL, new)
    }
}
