//! cargo-fuzz target `raft_snapshot`: [`highwater_fuzz::Target::RaftSnapshot`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    highwater_fuzz::Target::RaftSnapshot.run(data);
});
