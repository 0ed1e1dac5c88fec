#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| routehub_fuzz::labels(data));
