//! The parsers under fuzz and their property checks, compiled from floatip-userspace's own
//! files: they need only std and anyhow, so the fuzz build leaves out the eBPF object, aya and
//! SQLite that depending on the `floatip` library would bring in.

#[path = "../../floatip-userspace/src/addr.rs"]
pub mod addr;
#[path = "../../floatip-userspace/src/fuzzing.rs"]
pub mod fuzzing;
