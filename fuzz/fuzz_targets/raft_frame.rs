//! cargo-fuzz target `raft_frame`: [`highwater_fuzz::Target::RaftFrame`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    highwater_fuzz::Target::RaftFrame.run(data);
});
