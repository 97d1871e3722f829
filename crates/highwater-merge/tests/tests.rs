//! Integration tests of highwater-merge (one binary, one module per area).

mod tests {
    mod conflicts;
    mod dedup;
}
