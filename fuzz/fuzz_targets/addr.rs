//! Address, range and CIDR parsing and the pool arithmetic built on it (see `fuzzing.rs` for the
//! input format and the properties).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floatip_fuzz::fuzzing::check_addr(data));
