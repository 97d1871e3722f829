//! cargo-fuzz target `wal_segment`: [`highwater_fuzz::Target::WalSegment`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    highwater_fuzz::Target::WalSegment.run(data);
});
