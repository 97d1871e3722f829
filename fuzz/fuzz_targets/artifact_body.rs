//! cargo-fuzz target `artifact_body`: [`highwater_fuzz::Target::ArtifactBody`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    highwater_fuzz::Target::ArtifactBody.run(data);
});
