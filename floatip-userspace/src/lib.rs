//! floatip user space: the loader, the control plane and the CLI behind the `floatip` binary.

pub mod addr;
pub mod cli;
pub mod control;
pub mod dataplane;
pub mod failpoint;
pub mod garp;
pub mod iface;
pub mod output;
pub mod store;
