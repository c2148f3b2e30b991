//! Event producers: each implements `ExitHandler` and makes the guest see an event this
//! machine's hardware would not produce by itself. [`Producers`] says which a run uses.

pub mod pager;
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
}

impl Producers {
    /// What `cargo xtask run`, the binary and the end-to-end tests use unless told otherwise:
    /// every producer, with its default settings.
    pub fn defaults() -> Self {
        Self { sld: Some(sld::SldConfig::default()), pager: Some(pager::config::PagerConfig::default()) }
    }

    /// Creates the producers.
    pub fn build(&self) -> Result<Vec<Box<dyn ExitHandler>>> {
        let mut out: Vec<Box<dyn ExitHandler>> = Vec::new();
        if let Some(config) = &self.sld {
            out.push(Box::new(sld::SplitLock::new(*config)));
        }
        if let Some(config) = &self.pager {
            out.push(Box::new(pager::Pager::new(config.clone()).map_err(Error::Pager)?));
        }
        Ok(out)
    }
}
