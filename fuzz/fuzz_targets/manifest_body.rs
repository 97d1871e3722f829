//! cargo-fuzz target `manifest_body`: [`highwater_fuzz::Target::ManifestBody`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    highwater_fuzz::Target::ManifestBody.run(data);
});
