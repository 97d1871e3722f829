//! `highwater inspect` and `highwater verify` of a cluster job's shared
//! store (docs/raft.md, "Cluster jobs"): the global checkpoints its ledger
//! records next to each participant's local manifests, and a check that
//! every globally completed checkpoint is restorable. Real demo runs into
//! real directories: a Raft cluster of node processes (ledger read offline
//! from the nodes' data directories) and one process of subtasks (the
//! ledger in the store's `ledger` scope).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_highwater");

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN).args(args).arg(dir).output().unwrap()
}

fn demo(dir: &Path, extra: &[&str]) {
    let out = Command::new(BIN)
        .args(["demo", "--dir"])
        .arg(dir)
        .args(["--events", "20000"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo {extra:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(args: &[&str], dir: &Path) -> (Option<i32>, Value) {
    let out = run(args, dir);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "highwater {args:?}: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// `inspect --json` of a job of `n` participants (ids `ids`): completed
/// global checkpoints, each with every participant's part, each part a
/// local manifest of its participant's scope; returns the newest completed
/// id.
fn completed_with_every_part(dir: &Path, ids: &[u64], ledger_kind: &str) -> u64 {
    let (code, v) = json(&["inspect", "--json"], dir);
    assert_eq!(code, Some(0), "{v:#}");
    // The store's own checkpoints are still listed (what other users parse).
    assert!(v["checkpoints"].is_array(), "{v:#}");
    assert_eq!(v["ledger"]["kind"], ledger_kind, "{v:#}");
    let participants = v["participants"].as_array().unwrap();
    let completed: Vec<&Value> = v["global_checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] == "completed")
        .collect();
    assert!(
        !completed.is_empty(),
        "no completed global checkpoint: {v:#}"
    );
    for g in &completed {
        let id = g["id"].as_u64().unwrap();
        let parts = g["parts"].as_object().unwrap();
        for p in ids {
            let part = parts
                .get(&p.to_string())
                .unwrap_or_else(|| panic!("checkpoint {id} lacks participant {p}'s part: {v:#}"));
            assert_eq!(part, &format!("participants/{p}@{id}"), "{v:#}");
        }
        assert_eq!(parts.len(), ids.len(), "{v:#}");
    }
    let newest = completed
        .iter()
        .map(|g| g["id"].as_u64().unwrap())
        .max()
        .unwrap();
    // The newest's parts are retained: each participant lists its manifest,
    // with its subtask.
    for p in ids {
        let scope = format!("participants/{p}");
        let row = participants
            .iter()
            .find(|r| r["scope"] == scope.as_str())
            .unwrap_or_else(|| panic!("no participant {scope}: {v:#}"));
        let m = row["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == newest)
            .unwrap_or_else(|| panic!("{scope} has no manifest {newest}: {v:#}"));
        assert!(m["kind"].is_string(), "{v:#}");
        assert!(
            m["subtask"]
                .as_str()
                .is_some_and(|s| s.ends_with(&format!("/{}", ids.len()))),
            "{v:#}"
        );
    }
    // The text table lists it too.
    let text = String::from_utf8_lossy(&run(&["inspect"], dir).stdout).into_owned();
    assert!(text.contains("global checkpoints: "), "{text}");
    assert!(
        text.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(&newest.to_string()) && w.next() == Some("completed")
        }),
        "{text}"
    );
    newest
}

/// `verify` passes; with participant `victim`'s manifest of the newest
/// completed checkpoint deleted it fails, naming the checkpoint and the
/// participant, in text and JSON.
fn verify_then_break(dir: &Path, newest: u64, victim: u64) {
    let out = run(&["verify"], dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("global checkpoint {newest}: ok (")),
        "{text}"
    );
    let (code, v) = json(&["verify", "--json"], dir);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["sound"], true, "{v:#}");
    let first = &v["global_checkpoints"][0];
    assert_eq!(first["checkpoint"], newest, "{v:#}");
    assert_eq!(first["state"], "restorable", "{v:#}");
    assert_eq!(first["covers_key_groups"], true, "{v:#}");

    let part = dir
        .join(format!("participants/{victim}/manifests"))
        .join(format!("{newest:0>20}.hwm"));
    std::fs::remove_file(&part).unwrap_or_else(|e| panic!("{}: {e}", part.display()));

    let out = run(&["verify"], dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "global checkpoint {newest} (newest): BAD participant {victim}: part participants/{victim}@{newest} is not in the store"
        )),
        "{text}"
    );
    let (code, v) = json(&["verify", "--json"], dir);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["sound"], false, "{v:#}");
    let first = &v["global_checkpoints"][0];
    assert_eq!(first["checkpoint"], newest, "{v:#}");
    assert_eq!(first["state"], "damaged", "{v:#}");
    assert!(
        first["problems"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .unwrap()
            .starts_with(&format!("participant {victim}:"))),
        "{v:#}"
    );
    // The inspect table still lists the checkpoint; the participant no
    // longer has its manifest.
    let (_, v) = json(&["inspect", "--json"], dir);
    let g = v["global_checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == newest)
        .unwrap();
    assert!(
        !g["local"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == format!("participants/{victim}").as_str()),
        "{v:#}"
    );
}

/// A Raft cluster of 3 node processes, stopped: the ledger is read
/// offline from the nodes' data directories.
#[cfg(feature = "raft")]
#[test]
fn a_raft_cluster_s_global_checkpoints_are_inspected_and_verified_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    demo(&dir, &["--cluster", "3"]);
    // Nodes 1..=3 are the participants (participant id = node id).
    let newest = completed_with_every_part(&dir, &[1, 2, 3], "raft-offline");
    verify_then_break(&dir, newest, 2);
}

/// Three subtasks of one process: the LocalCoordinator's ledger in the
/// store's `ledger` scope.
#[test]
fn a_local_coordinator_job_s_global_checkpoints_are_inspected_and_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("job");
    demo(&dir, &["--parallelism", "3"]);
    let newest = completed_with_every_part(&dir, &[0, 1, 2], "store");
    verify_then_break(&dir, newest, 1);
}

/// A cluster whose every node's Raft data is damaged: `verify` cannot
/// read the ledger and fails saying why, rather than passing.
#[cfg(feature = "raft")]
#[test]
fn verify_fails_when_no_node_s_ledger_can_be_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    demo(&dir, &["--cluster", "3"]);
    for i in 1..=3 {
        let log = dir.join(format!("raft/node-{i}/raft-log"));
        for e in std::fs::read_dir(&log).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "wal") {
                let mut bytes = std::fs::read(&p).unwrap();
                let n = bytes.len().min(64);
                for b in &mut bytes[..n] {
                    *b ^= 0x5a;
                }
                std::fs::write(&p, bytes).unwrap();
            }
        }
    }
    let out = run(&["verify"], &dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("BAD no ledger could be read: node 1"),
        "{text}"
    );
    // inspect still lists the participants, and why there is no ledger.
    let (code, v) = json(&["inspect", "--json"], &dir);
    assert_eq!(code, Some(0), "{v:#}");
    assert!(v["ledger"].is_null(), "{v:#}");
    assert_eq!(v["ledger_notes"].as_array().unwrap().len(), 3, "{v:#}");
    assert!(
        v["global_checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["state"] == "unknown"),
        "{v:#}"
    );
}
