//! cargo-fuzz target `artifact`: [`highwater_fuzz::Target::Artifact`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    highwater_fuzz::Target::Artifact.run(data);
});
