//! Incremental Internet checksum updates (RFC 1624, eqn. 3:
//! HC' = ~(~HC + ~m + m')). Words are used as they lie in memory; the
//! one's-complement sum does not care about byte order as long as every word
//! is read the same way.

use floatip_common::csum_fold as fold;

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
