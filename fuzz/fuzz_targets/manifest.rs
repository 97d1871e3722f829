//! cargo-fuzz target `manifest`: [`highwater_fuzz::Target::Manifest`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    highwater_fuzz::Target::Manifest.run(data);
});
