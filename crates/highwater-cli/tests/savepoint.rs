//! The offline state tools end to end: `highwater savepoint`, `export`,
//! `import` and `diff` on checkpoints written by the library.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use highwater::cloud::ObjectCheckpointStore;
use highwater::memory::MemoryBackend;
use highwater::{ListStateDescriptor, MapStateDescriptor, StateManager, ValueStateDescriptor};

const BIN: &str = env!("CARGO_BIN_EXE_highwater");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run highwater")
}

fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "highwater {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `highwater import FILE --to TARGET`.
fn import(file: &Path, target: &Path) {
    run_ok(&[
        "import",
        file.to_str().unwrap(),
        "--to",
        target.to_str().unwrap(),
    ]);
}

/// `highwater export SOURCE -o FILE`.
fn export(source: &Path, file: &Path) {
    run_ok(&[
        "export",
        source.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
}

fn manager(dir: &Path) -> StateManager {
    StateManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .store(Arc::new(ObjectCheckpointStore::local(dir).unwrap()))
        .max_retained(10)
        .build()
        .unwrap()
}

struct Handles {
    counts: highwater::ValueState<String, u64>,
    words: highwater::ListState<u32, String>,
    pairs: highwater::MapState<String, u16, Vec<u8>>,
}

fn handles(m: &StateManager) -> Handles {
    let ctx = m.keyed_state("job").unwrap();
    Handles {
        counts: ctx
            .value_state(&ValueStateDescriptor::new("counts"))
            .unwrap(),
        words: ctx.list_state(&ListStateDescriptor::new("words")).unwrap(),
        pairs: m
            .keyed_state("join")
            .unwrap()
            .map_state(&MapStateDescriptor::new("pairs"))
            .unwrap()
            .in_namespace(&3u64)
            .unwrap(),
    }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["artifacts", "manifests"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let e = e.unwrap();
            out.push((
                format!("{sub}/{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn savepoint_export_import_and_diff() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("store");
    let m = manager(&store);
    let h = handles(&m);
    for i in 0..300u32 {
        h.counts
            .update(&format!("w{i}"), &u64::from(i * 7))
            .unwrap();
        if i % 4 == 0 {
            h.words
                .add_all(&i, &[format!("a{i}"), "b,\"c\"".into()])
                .unwrap();
        }
        if i % 10 == 0 {
            h.pairs
                .put(&format!("u{i}"), &(i as u16), &vec![i as u8; 3])
                .unwrap();
        }
    }
    let first = m.checkpoint().unwrap().wait().unwrap();

    // An offline savepoint of the newest checkpoint.
    let sp = d.join("sp");
    let out = run_ok(&[
        "savepoint",
        store.to_str().unwrap(),
        "--to",
        sp.to_str().unwrap(),
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["source"]["id"], first.id.0);
    assert_eq!(j["entries"], 300 + 75 + 30);

    // export | import reproduces the savepoint, byte for byte.
    let jsonl = d.join("sp.jsonl");
    export(&sp, &jsonl);
    let text = std::fs::read_to_string(&jsonl).unwrap();
    assert_eq!(
        text.lines().count(),
        1 + 3 + 405,
        "header, schemas, entries"
    );
    let counted = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["state"] == "counts" && v["key"] == "w5")
        .expect("the entry of w5, with its key decoded");
    assert_eq!(counted["value"], 35);
    let sp2 = d.join("sp2");
    import(&jsonl, &sp2);
    assert_eq!(files(&sp2), files(&sp));

    // A file written by hand, with typed values only, bootstraps state.
    let hand = d.join("hand.jsonl");
    std::fs::write(
        &hand,
        concat!(
            r#"{"schema":{"operator":"job","state":"counts","kind":"Value","key_type":"alloc::string::String","namespace_type":null,"user_key_type":null,"value_type":"u64","version":1,"ttl":null}}"#,
            "\n",
            r#"{"operator":"job","state":"counts","key":"new","value":99}"#,
            "\n"
        ),
    )
    .unwrap();
    let boot = d.join("boot");
    import(&hand, &boot);
    let b = manager(&d.join("boot-store"));
    let counts = handles(&b).counts;
    b.restore_savepoint(Arc::new(ObjectCheckpointStore::local(&boot).unwrap()))
        .unwrap();
    assert_eq!(counts.get(&"new".to_string()).unwrap(), Some(99));

    // CSV: a header row and one row per entry (quoted where needed).
    let csv = run_ok(&[
        "export",
        sp.to_str().unwrap(),
        "--format",
        "csv",
        "--state",
        "words",
    ]);
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("operator,state,key_b64"));
    assert_eq!(lines.count(), 75);
    assert!(csv.contains(r#""[""a0"",""b,\""c\""""]""#), "{csv}");

    // diff of a checkpoint with itself, and with its savepoint: nothing.
    let s = store.to_str().unwrap();
    let out = run(&["diff", s, s, "--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["states"], serde_json::json!([]));
    assert!(run(&["diff", s, sp.to_str().unwrap()]).status.success());

    // A known set of changes, reported exactly.
    for i in 0..4u32 {
        h.counts.update(&format!("w{i}"), &1_000).unwrap(); // changed
    }
    h.counts.clear(&"w10".to_string()).unwrap(); // removed
    h.counts.clear(&"w11".to_string()).unwrap(); // removed
    for i in 0..3 {
        h.counts.update(&format!("new{i}"), &1).unwrap(); // added
    }
    h.words.add(&0, &"c".to_string()).unwrap(); // changed
    h.pairs.remove(&"u0".to_string(), &0).unwrap(); // removed
    let second = m.checkpoint().unwrap().wait().unwrap();
    let out = run(&[
        "diff",
        s,
        s,
        "--a-id",
        &first.id.0.to_string(),
        "--b-id",
        &second.id.0.to_string(),
        "--json",
        "--keys",
    ]);
    assert_eq!(out.status.code(), Some(1), "differences exit 1");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states = j["states"].as_array().unwrap();
    let counts = |op: &str, st: &str| {
        let s = states
            .iter()
            .find(|s| s["operator"] == op && s["state"] == st)
            .unwrap_or_else(|| panic!("{op}/{st} missing from {j}"));
        (
            s["added"].as_u64().unwrap(),
            s["removed"].as_u64().unwrap(),
            s["changed"].as_u64().unwrap(),
            s["removed_keys"].as_array().unwrap().len(),
        )
    };
    assert_eq!(states.len(), 3, "{j}");
    assert_eq!(counts("job", "counts"), (3, 2, 4, 2));
    assert_eq!(counts("job", "words"), (0, 0, 1, 0));
    assert_eq!(counts("join", "pairs"), (0, 1, 0, 1));
    let text = run(&["diff", s, s, "--a-id", &first.id.0.to_string()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("counts") && text.contains("pairs"), "{text}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad = d.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"operator\":\"o\",\"state\":\"s\",\"key\":1,\"value\":2}\n",
    )
    .unwrap();
    let out = run(&[
        "import",
        bad.to_str().unwrap(),
        "--to",
        d.join("t").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1") && err.contains("no known type"),
        "{err}"
    );
    std::fs::write(&bad, "not json\n").unwrap();
    let out = run(&[
        "import",
        bad.to_str().unwrap(),
        "--to",
        d.join("t").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A store that is not there is a failure (1), not a usage error
    // (docs/operations.md, "Exit codes").
    let out = run(&["export", d.join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

/// A list state with a TTL (elements expiring one by one) goes through
/// `export | import` byte for byte: the export names every element's
/// expiry beside the typed elements, and a typed line with those expiries
/// imports to the same state.
#[test]
fn per_element_list_ttl_survives_export_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("store");
    let m = manager(&store);
    let ttl = highwater::TtlConfig::new(std::time::Duration::from_secs(3600));
    let recent: highwater::ListState<u32, u32> = m
        .keyed_state("job")
        .unwrap()
        .list_state(&ListStateDescriptor::new("recent").with_ttl(ttl))
        .unwrap();
    for k in 0..20u32 {
        recent.add_all(&k, &[k, k + 100]).unwrap();
    }
    recent.add(&3, &77).unwrap();
    m.checkpoint().unwrap().wait().unwrap();
    let sp = d.join("sp");
    run_ok(&[
        "savepoint",
        store.to_str().unwrap(),
        "--to",
        sp.to_str().unwrap(),
    ]);
    let jsonl = d.join("sp.jsonl");
    export(&sp, &jsonl);
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let line = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["state"] == "recent" && v["key"] == 3)
        .expect("the list of key 3");
    assert_eq!(line["value"], serde_json::json!([3, 103, 77]));
    let expiries = line["element_expires_at_ms"].as_array().unwrap();
    assert_eq!(expiries.len(), 3, "{line}");
    assert!(expiries.iter().all(|e| e.as_u64().unwrap() > 0));
    let sp2 = d.join("sp2");
    import(&jsonl, &sp2);
    assert_eq!(files(&sp2), files(&sp));

    // The same lines with typed values only (no `_b64` fields).
    let typed: String = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut()
                && o.contains_key("value_b64")
            {
                o.retain(|k, _| !k.ends_with("_b64"));
            }
            v.to_string() + "\n"
        })
        .collect();
    let typed_file = d.join("typed.jsonl");
    std::fs::write(&typed_file, typed).unwrap();
    let sp3 = d.join("sp3");
    import(&typed_file, &sp3);
    assert_eq!(files(&sp3), files(&sp));
}
