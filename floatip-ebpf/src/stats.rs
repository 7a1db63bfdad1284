//! Counters: per outcome, per association (per CPU or shared), and per NIC program the
//! redirects the kernel refused.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::generated::bpf_get_smp_processor_id;
use floatip_common::AssocStats;

use crate::maps::{
    ASSOC_STATS, ASSOC_STATS_SHARED, OUTCOMES, SEND_DROPS, per_cpu_slot, shared_counters,
};

#[inline(always)]
pub fn count(outcome: u32) {
    if let Some(c) = OUTCOMES.get_ptr_mut(outcome) {
        unsafe { *c += 1 };
    }
}

/// Counts a packet for the association whose counters are at `slot`;
/// `inbound` when it arrived for the floating IP, otherwise sent from it.
/// Per-CPU counters (this CPU's copy in the flat `ASSOC_STATS`) take plain
/// adds: a program runs to its end on one CPU; shared ones (where per-CPU copies would
/// not fit the memory budget, the loader's choice) atomic adds, since CPUs
/// count the same association at once.
#[inline(always)]
pub fn count_assoc(slot: u32, inbound: bool, bytes: u64) {
    if shared_counters() {
        if let Some(s) = ASSOC_STATS_SHARED.get_ptr_mut(slot) {
            let (packets, octets) = unsafe {
                if inbound {
                    (&raw mut (*s).in_packets, &raw mut (*s).in_bytes)
                } else {
                    (&raw mut (*s).out_packets, &raw mut (*s).out_bytes)
                }
            };
            // The result unused: LLVM emits BPF_ATOMIC add without fetch.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(packets, 1);
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(octets, bytes);
            }
        }
    } else if let Some(s) =
        ASSOC_STATS.get_ptr_mut(per_cpu_slot(unsafe { bpf_get_smp_processor_id() }, slot))
    {
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
