//! The bulk-association file format of `floatip ip associate --from-file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floatip_fuzz::fuzzing::check_bulk(data));
