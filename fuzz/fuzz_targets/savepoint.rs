//! cargo-fuzz target `savepoint`: [`highwater_fuzz::Target::Savepoint`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    highwater_fuzz::Target::Savepoint.run(data);
});
