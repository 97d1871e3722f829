//! `highwater-fuzz-seeds DIR`: writes each target's seed corpus, made by
//! the library, to `DIR/<target>/seed-N` (what `cargo xtask fuzz` starts
//! `cargo fuzz` from).

use highwater_fuzz::{Target, seeds};

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: highwater-fuzz-seeds DIR");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    for target in Target::ALL {
        let out = dir.join(target.name());
        if let Err(e) = std::fs::create_dir_all(&out) {
            eprintln!("creating {}: {e}", out.display());
            std::process::exit(1);
        }
        let inputs = seeds(target);
        for (i, input) in inputs.iter().enumerate() {
            let path = out.join(format!("seed-{i}"));
            if let Err(e) = std::fs::write(&path, input) {
                eprintln!("writing {}: {e}", path.display());
                std::process::exit(1);
            }
        }
        println!(
            "{}: {} seeds in {}",
            target.name(),
            inputs.len(),
            out.display()
        );
    }
}
