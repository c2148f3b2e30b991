//! Event producers: each implements `ExitHandler` and makes the guest see an event this
//! machine's hardware would not produce by itself. [`Producers`] says which a run uses.

pub mod armed;
pub mod churn;
pub mod pager;
pub mod released;
pub mod sld;

use crate::error::{Error, Result};
use crate::handler::ExitHandler;

/// The producers of one run and their settings.
#[derive(Clone, Debug, Default)]
pub struct Producers {
    /// Split-lock detection and #AC (the trigger, MSR_TEST_CTRL, the seed 000 policy), if any.
    pub sld: Option<sld::SldConfig>,
    /// The demand pager (page-not-present events), if any.
    pub pager: Option<pager::config::PagerConfig>,
    /// A region whose memory the host released, for memory-fault exits (off by default).
    pub released: Option<released::ReleasedConfig>,
    /// Memory-layout updates while the guest runs: the churn region the memslot self-tests ask
    /// the host to change (by default, every change holding the vCPUs), and guest RAM split and
    /// merged every so many entries (not by default).
    pub churn: Option<churn::ChurnConfig>,
    /// Rules of the ABI to break on purpose from the start, on every vCPU, once each
    /// (`--break`; `pvagent_abi::breach`): each must be one a producer of the run breaks.
    pub breaks: Vec<pvagent_abi::breach::Breach>,
}

impl Producers {
    /// What `cargo xtask run`, the binary and the end-to-end tests use unless told otherwise:
    /// every producer, with its default settings.
    pub fn defaults() -> Self {
        Self {
            sld: Some(sld::SldConfig::default()),
            pager: Some(pager::config::PagerConfig::default()),
            released: None,
            churn: Some(churn::ChurnConfig { ram_every: None, hold: true }),
            breaks: Vec::new(),
        }
    }

    /// Creates the producers.
    /// A rule in [`Producers::breaks`] that no producer of the run breaks is an error naming it.
    pub fn build(&self) -> Result<Vec<Box<dyn ExitHandler>>> {
        let mut out: Vec<Box<dyn ExitHandler>> = Vec::new();
        let mut served = Vec::new();
        if let Some(config) = &self.sld {
            let mut sld = sld::SplitLock::new(*config);
            served.extend(sld.break_from_start(&self.breaks));
            out.push(Box::new(sld));
        }
        if let Some(config) = &self.pager {
            let mut pager = pager::Pager::new(config.clone()).map_err(Error::Pager)?;
            served.extend(pager.break_from_start(&self.breaks));
            out.push(Box::new(pager));
        }
        if let Some(&rule) = self.breaks.iter().find(|r| !served.contains(r)) {
            return Err(Error::BreakNotServed { rule: rule.to_string(), why: "no producer of this run breaks it" });
        }
        if let Some(config) = self.released {
            out.push(Box::new(released::ReleasedBacking::new(config)));
        }
        if let Some(config) = self.churn {
            out.push(Box::new(churn::Churn::new(config)));
        }
        Ok(out)
    }
}
