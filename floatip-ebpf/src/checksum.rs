//! Incremental Internet checksum updates (RFC 1624, eqn. 3:
//! HC' = ~(~HC + ~m + m')). Words are used as they lie in memory; the
//! one's-complement sum does not care about byte order as long as every word
//! is read the same way. Also the one place that knows which transport
//! checksums cover the IPv4 pseudo-header, where they lie and how each
//! treats a checksum of zero.

use aya_ebpf::bindings::{BPF_F_MARK_ENFORCE, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use floatip_common::csum_fold as fold;

use crate::parse::{IPPROTO_DCCP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE};

/// New checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// New checksum after a 32-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u32 + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

/// A one's-complement sum of 32-bit words (as read from memory) folded to
/// 16 bits.
#[inline(always)]
fn fold64(sum: u64) -> u16 {
    let s = (sum & 0xffff_ffff) + (sum >> 32);
    let s = (s & 0xffff_ffff) + (s >> 32);
    fold(s as u32)
}

/// Whether a sum of 32-bit words over a header including its checksum
/// verifies: it folds to all ones.
#[inline(always)]
pub fn sum_verifies(sum: u64) -> bool {
    fold64(sum) == 0xffff
}

/// The checksum to store for a sum of 32-bit words taken with the checksum
/// field zero.
#[inline(always)]
pub fn complement(sum: u64) -> u16 {
    !fold64(sum)
}

/// How a transport checksum treats zero.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Zero {
    /// TCP, DCCP: 0x0000 and 0xffff are the same one's-complement value.
    Plain,
    /// UDP: 0 means "no checksum" and stays 0; a computed 0 is sent as
    /// 0xffff (RFC 768).
    MeansNone,
    /// UDP-Lite: 0 is never valid (RFC 3828 §3.1); a computed 0 is sent as
    /// 0xffff.
    NeverSent,
}

impl Zero {
    /// The new checksum after a pseudo-header address changed from `old`
    /// to `new`, or `None` when the field stays as it is (UDP without one).
    #[inline(always)]
    pub fn replace4(self, check: u16, old: u32, new: u32) -> Option<u16> {
        if self == Zero::MeansNone && check == 0 {
            return None;
        }
        let next = replace4(check, old, new);
        Some(if self != Zero::Plain && next == 0 {
            0xffff
        } else {
            next
        })
    }

    /// The same rule as [`Zero::replace4`] in `bpf_l4_csum_replace` flags,
    /// for a 4-byte pseudo-header field.
    #[inline(always)]
    pub fn l4_csum_replace_flags(self) -> u64 {
        let base = BPF_F_PSEUDO_HDR as u64 | 4;
        match self {
            Zero::Plain => base,
            Zero::MeansNone => base | BPF_F_MARK_MANGLED_0 as u64,
            Zero::NeverSent => base | (BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE) as u64,
        }
    }
}

/// Where the pseudo-header checksum of `proto` lies in a fragment's
/// payload: the fragment starts `frag` bytes into the transport segment and
/// `len` of its bytes are at hand. `None` when `proto` carries no such
/// checksum or this fragment does not hold it. The field's offset in the
/// segment is fixed, so whichever fragment holds it (a tiny first fragment
/// may not) is updated on its own, statelessly. Fragment offsets are
/// multiples of 8 and the fields lie at 6..8 and 16..18, so a field is
/// never split between fragments.
#[inline(always)]
pub fn pseudo_field(proto: u8, frag: usize, len: usize) -> Option<(usize, Zero)> {
    let (off, zero) = match proto {
        IPPROTO_TCP => (16, Zero::Plain),
        IPPROTO_UDP => (6, Zero::MeansNone),
        IPPROTO_UDPLITE => (6, Zero::NeverSent),
        IPPROTO_DCCP => (6, Zero::Plain),
        _ => return None,
    };
    if frag > off || off + 2 > frag + len {
        return None;
    }
    Some((off - frag, zero))
}
