//! Typed access to the two split-lock MSRs. A [`TestCtrl`] exists only once enumeration said
//! the MSR and its detection bit exist, so the code above it cannot write the MSR on a CPU that
//! lacks it.

use pvagent_abi::cpuid::Features;
use pvagent_abi::sld;

use super::policy::Enumeration;
use x86_64::registers::model_specific::Msr;

use crate::arch::cpu;

/// Follows the architectural enumeration: CPUID.(7,0):EDX bit 30 (or the host stub's
/// repetition of it), then IA32_CORE_CAPABILITIES.
pub fn enumerate() -> Enumeration {
    let edx = cpu::cpuid(sld::CPUID_LEAF, sld::CPUID_SUBLEAF).edx;
    let host_says = crate::arch::platform().hypervisor.host_features().has(Features::CORE_CAPABILITIES);
    Enumeration::probe(edx, host_says, || {
        // SAFETY: `probe` calls this only when CPUID.(7,0):EDX[30], or the host stub's leaf
        // repeating it, says IA32_CORE_CAPABILITIES exists; reading it has no side effects.
        unsafe { Msr::new(sld::MSR_CORE_CAPABILITIES).read() }
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

    /// The raw value.
    pub fn read(self) -> u64 {
        // SAFETY: a `TestCtrl` exists only when enumeration found the MSR; reading it has no
        // side effects.
        unsafe { Msr::new(sld::MSR_TEST_CTRL).read() }
    }

    /// Whether detection is on, as the register says.
    pub fn detection_on(self) -> bool {
        self.read() & sld::TEST_CTRL_SPLIT_LOCK_DETECT != 0
    }

    /// Turns detection on or off, keeping every other bit as it is.
    pub fn set_detection(self, on: bool) {
        let old = self.read();
        let new = if on { old | sld::TEST_CTRL_SPLIT_LOCK_DETECT } else { old & !sld::TEST_CTRL_SPLIT_LOCK_DETECT };
        // SAFETY: the MSR exists (see `read`) and only the enumerated detection bit changes;
        // detection affects only which locked accesses raise #AC, which the #AC handler serves.
        unsafe { Msr::new(sld::MSR_TEST_CTRL).write(new) };
    }
}
