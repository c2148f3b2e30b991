//! The event producers: each makes the host produce one kind of event the guest handles, as an
//! [`ExitHandler`] added to the VM's list.

pub mod sld;

use crate::handler::ExitHandler;

/// The producers a plain run uses, with their default configuration (`cargo xtask run` and the
/// end-to-end tests boot with these).
pub fn defaults() -> Vec<Box<dyn ExitHandler>> {
    vec![Box::new(sld::SplitLock::new(sld::SldConfig::default()))]
}
