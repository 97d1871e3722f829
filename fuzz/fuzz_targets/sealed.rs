//! cargo-fuzz target `sealed`: [`highwater_fuzz::Target::Sealed`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    highwater_fuzz::Target::Sealed.run(data);
});
