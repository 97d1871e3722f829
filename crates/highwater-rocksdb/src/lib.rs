//! RocksDB state backend for highwater.
