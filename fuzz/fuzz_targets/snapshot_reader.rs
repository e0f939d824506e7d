#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nexus_node::fuzz::snapshot_reader(data));
