//! floatip user space: the loader, the control plane and the CLI behind the `floatip` binary.

pub mod addr;
pub mod agent;
pub mod api;
pub mod cli;
pub mod control;
pub mod dataplane;
pub mod error;
pub mod failpoint;
pub mod follower;
/// Property checks of the parsers, for the fuzz targets in `fuzz/` and the corpus replay test.
#[doc(hidden)]
pub mod fuzzing;
pub mod garp;
pub mod iface;
pub mod nexthop;
pub mod output;
pub mod store;
