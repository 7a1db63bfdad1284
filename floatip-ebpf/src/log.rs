//! Event log through aya-log: drops, malformed frames and translated
//! packets left to the kernel, with why. Off unless `floatip log` runs
//! (it sets `META.log_enabled`): the check is one array read, on those
//! paths only; a translated and redirected packet never reaches it.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::info;

use crate::{maps::META, verdict::DropReason};

#[inline(always)]
fn enabled() -> bool {
    META.get(0).is_some_and(|m| m.log_enabled != 0)
}

/// Addresses are kept as their bytes in memory; aya-log's `{:i}` wants the
/// number they spell.
#[inline(always)]
fn ip(addr: u32) -> u32 {
    u32::from_be(addr)
}

#[inline(always)]
pub fn dropped<C: EbpfContext>(ctx: &C, ifindex: u32, why: DropReason, src: u32, dst: u32) {
    if enabled() {
        info!(
            ctx,
            "if {}: dropped, {}: {:i} -> {:i}",
            ifindex,
            why.as_str(),
            ip(src),
            ip(dst)
        );
    }
}

#[inline(always)]
pub fn malformed<C: EbpfContext>(ctx: &C, ifindex: u32, len: u32) {
    if enabled() {
        info!(
            ctx,
            "if {}: malformed or unsupported frame of {} bytes, passed untouched", ifindex, len
        );
    }
}

#[inline(always)]
pub fn to_kernel<C: EbpfContext>(ctx: &C, ifindex: u32, why: &'static str) {
    if enabled() {
        info!(ctx, "if {}: handed to the kernel: {}", ifindex, why);
    }
}
