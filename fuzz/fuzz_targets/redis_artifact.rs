//! cargo-fuzz target `redis_artifact`: [`highwater_fuzz::Target::RedisArtifact`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    highwater_fuzz::Target::RedisArtifact.run(data);
});
