//! Per-CPU counters: per outcome, per association, and per NIC program the redirects
//! the kernel refused.

use floatip_common::AssocStats;

use crate::maps::{ASSOC_STATS, OUTCOMES, SEND_DROPS};

#[inline(always)]
pub fn count(outcome: u32) {
    if let Some(c) = OUTCOMES.get_ptr_mut(outcome) {
        unsafe { *c += 1 };
    }
}

/// Counts a packet for the association whose counters are at `slot`;
/// `inbound` when it arrived for the floating IP, otherwise sent from it.
#[inline(always)]
pub fn count_assoc(slot: u32, inbound: bool, bytes: u64) {
    if let Some(s) = ASSOC_STATS.get_ptr_mut(slot) {
        let s: &mut AssocStats = unsafe { &mut *s };
        if inbound {
            s.in_packets += 1;
            s.in_bytes += bytes;
        } else {
            s.out_packets += 1;
            s.out_bytes += bytes;
        }
    }
}

/// Counts a frame that program `prog` redirected and the kernel dropped instead of sending
/// (the send-drop tracepoint). Only floatip's programs have entries (the loader's).
#[inline(always)]
pub fn count_send_drop(prog: u32) {
    if let Some(c) = SEND_DROPS.get_ptr_mut(&prog) {
        unsafe { *c += 1 };
    }
}
