//! Offline state tools: `highwater savepoint`, `export`, `import` and
//! `diff`. Each reads a store holding checkpoints (its newest, or
//! `--checkpoint ID`, restored into memory) or savepoints (its newest, or
//! `--savepoint ID`), through the library API of
//! `highwater::merge::savepoint`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use highwater::core::{
    Envelope, SavepointManifest, SnapshotKind, StateBackend as _, StateKind, StateSchema,
};
use highwater::memory::MemoryBackend;
use highwater::merge::savepoint::{
    SavepointEntry, SavepointParams, SavepointReader, snapshot_entries, write_savepoint,
};
use highwater::recovery::{Recovery, RecoveryConfig, RecoveryScope, RecoveryTarget};
use highwater::{CheckpointId, CheckpointStore, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::target::open_store;

/// Where state is read from: a store and, optionally, which of its
/// checkpoints or savepoints.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Key namespace of a Redis store.
    #[arg(long, default_value = "highwater")]
    pub namespace: String,
    /// Read this checkpoint or savepoint id instead of the newest.
    #[arg(long = "id")]
    pub id: Option<u64>,
}

/// The state of one checkpoint or savepoint, entry by entry.
pub struct Loaded {
    /// "checkpoint" or "savepoint".
    pub kind: &'static str,
    /// Its id.
    pub id: CheckpointId,
    /// Key groups of the job that wrote it.
    pub max_parallelism: u16,
    /// When it was written.
    pub created_at_ms: u64,
    /// Its properties.
    pub properties: BTreeMap<String, String>,
    /// The checkpoint its state comes from: its own id for a checkpoint,
    /// the recorded source for a savepoint.
    pub source_checkpoint: Option<CheckpointId>,
    /// Its state schemas.
    pub schemas: Vec<StateSchema>,
    /// Every entry, sorted.
    pub entries: Vec<SavepointEntry>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("start a runtime", e))
}

fn spinner(json: bool, msg: &str) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(msg.to_string());
    bar
}

/// Reads `spec`'s newest (or `id`) checkpoint or savepoint.
pub fn load(spec: &str, source: &SourceArgs, quiet: bool) -> Result<Loaded> {
    let rt = runtime()?;
    let store = open_store(spec, &source.namespace, false)?;
    let s = store.clone();
    let ids = rt.block_on(async move { s.list_manifests().await })?;
    let id = match source.id {
        Some(id) => CheckpointId(id),
        None => *ids
            .last()
            .ok_or_else(|| Error::NotFound(format!("no checkpoint or savepoint in {spec}")))?,
    };
    let s = store.clone();
    let bytes = rt.block_on(async move { s.get_manifest(id).await })?;
    let bar = spinner(quiet, &format!("reading {spec}"));
    let loaded = if SavepointManifest::is_savepoint(&bytes) {
        let reader = SavepointReader::open(store, rt.handle().clone(), Some(id))?;
        let m = reader.manifest().clone();
        let mut entries = Vec::with_capacity(m.entries() as usize);
        for (i, state) in m.states.iter().enumerate() {
            bar.set_message(format!(
                "reading {spec}: state {}/{} {}/{}",
                i + 1,
                m.states.len(),
                state.operator,
                state.state
            ));
            entries.extend(reader.state_entries(state)?);
        }
        Loaded {
            kind: "savepoint",
            id,
            max_parallelism: m.max_parallelism,
            created_at_ms: m.created_at_ms,
            properties: m.properties.clone(),
            source_checkpoint: m.source_checkpoint,
            schemas: m.schemas(),
            entries,
        }
    } else {
        let engine = Recovery::new(store, RecoveryConfig::default(), rt.handle().clone())?;
        let backend = MemoryBackend::new();
        let outcome = engine.recover(
            RecoveryTarget::Checkpoint(id),
            &RecoveryScope::all(),
            &backend,
            None,
            None,
        )?;
        let m = outcome
            .manifest
            .ok_or_else(|| Error::Internal("a checkpoint restore without a manifest".into()))?;
        let snapshot = backend.snapshot(SnapshotKind::Full)?;
        let mut entries = snapshot_entries(&*snapshot)?
            .iter()
            .map(|(k, v)| SavepointEntry::from_raw(k, v))
            .collect::<Result<Vec<_>>>()?;
        entries.sort();
        Loaded {
            kind: "checkpoint",
            id,
            max_parallelism: m.max_parallelism,
            created_at_ms: m.created_at_ms,
            properties: m.properties.clone(),
            source_checkpoint: Some(id),
            schemas: m.schemas.clone(),
            entries,
        }
    };
    bar.finish_and_clear();
    Ok(loaded)
}

fn now_ms() -> u64 {
    use highwater::Clock as _;
    highwater::SystemClock.now_ms()
}

fn write_target(
    target: &str,
    namespace: &str,
    entries: &[SavepointEntry],
    schemas: &[StateSchema],
    params: &SavepointParams,
) -> Result<highwater::SavepointInfo> {
    let rt = runtime()?;
    let store: Arc<dyn CheckpointStore> = open_store(target, namespace, true)?;
    let raw = entries.iter().map(|e| e.to_raw(params.max_parallelism));
    let (_, info) = write_savepoint(raw, schemas, params, &store, rt.handle())?;
    Ok(info)
}

/// `highwater savepoint STORE --to TARGET`.
pub fn savepoint(
    store: &str,
    source: &SourceArgs,
    to: &str,
    to_namespace: &str,
    json: bool,
) -> Result<ExitCode> {
    let loaded = load(store, source, json)?;
    let mut params = SavepointParams::new(loaded.max_parallelism, now_ms());
    params.source_checkpoint = loaded.source_checkpoint;
    params.properties = loaded.properties.clone();
    let info = write_target(to, to_namespace, &loaded.entries, &loaded.schemas, &params)?;
    if json {
        println!(
            "{}",
            json!({
                "source": {"kind": loaded.kind, "id": loaded.id.0},
                "savepoint": info.id.0,
                "entries": info.entries,
                "expired_dropped": info.expired_dropped,
                "logical_bytes": info.logical_bytes,
                "stored_bytes": info.stored_bytes,
                "artifacts": info.artifacts,
            })
        );
    } else {
        println!(
            "savepoint {} written to {to} from {} {}: {} entries, {} bytes stored in {} artifacts",
            info.id, loaded.kind, loaded.id, info.entries, info.stored_bytes, info.artifacts
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Decodes one value of the type named `ty` from the front of `bytes`,
/// as JSON, with the bytes it used; `None` for a type this tool does not
/// know or bytes that are not one.
fn take_typed(ty: &str, bytes: &[u8]) -> Option<(Value, usize)> {
    macro_rules! take {
        ($t:ty) => {{
            let (v, rest) = postcard::take_from_bytes::<$t>(bytes).ok()?;
            Some((json!(v), bytes.len() - rest.len()))
        }};
    }
    match ty {
        "u8" => take!(u8),
        "u16" => take!(u16),
        "u32" => take!(u32),
        "u64" => take!(u64),
        "usize" => take!(usize),
        "i8" => take!(i8),
        "i16" => take!(i16),
        "i32" => take!(i32),
        "i64" => take!(i64),
        "isize" => take!(isize),
        "bool" => take!(bool),
        "char" => take!(char),
        "f32" => take!(f32),
        "f64" => take!(f64),
        "()" => take!(()),
        "str" | "alloc::string::String" => take!(String),
        "alloc::vec::Vec<u8>" => take!(Vec<u8>),
        _ => None,
    }
}

/// The JSON form of a value of type `ty` that uses all of `bytes`.
fn to_json(ty: &str, bytes: &[u8]) -> Option<Value> {
    match take_typed(ty, bytes)? {
        (v, used) if used == bytes.len() => Some(v),
        _ => None,
    }
}

/// The JSON form of a list of `ty` elements.
fn list_to_json(ty: &str, mut bytes: &[u8]) -> Option<Value> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (v, used) = take_typed(ty, bytes)?;
        out.push(v);
        bytes = &bytes[used..];
    }
    Some(Value::Array(out))
}

/// Encodes the JSON value `v` as the type named `ty`.
fn from_json(ty: &str, v: &Value, out: &mut Vec<u8>) -> Result<()> {
    let bad = || Error::InvalidArgument(format!("not a {ty}: {v}"));
    macro_rules! put {
        ($t:ty) => {{
            let x: $t = serde_json::from_value(v.clone()).map_err(|_| bad())?;
            out.extend(postcard::to_allocvec(&x).map_err(|e| Error::serialization(ty, e))?);
            Ok(())
        }};
    }
    match ty {
        "u8" => put!(u8),
        "u16" => put!(u16),
        "u32" => put!(u32),
        "u64" => put!(u64),
        "usize" => put!(usize),
        "i8" => put!(i8),
        "i16" => put!(i16),
        "i32" => put!(i32),
        "i64" => put!(i64),
        "isize" => put!(isize),
        "bool" => put!(bool),
        "char" => put!(char),
        "f32" => put!(f32),
        "f64" => put!(f64),
        "()" => put!(()),
        "str" | "alloc::string::String" => put!(String),
        "alloc::vec::Vec<u8>" => put!(Vec<u8>),
        _ => Err(Error::InvalidArgument(format!(
            "no typed encoding for {ty}: give the field as base64 (`..._b64`)"
        ))),
    }
}

type Schemas = BTreeMap<(String, String), StateSchema>;

fn schema_map(schemas: &[StateSchema]) -> Schemas {
    schemas
        .iter()
        .map(|s| ((s.operator.clone(), s.state.clone()), s.clone()))
        .collect()
}

/// One exported entry: every field in base64, plus its typed form where
/// the state's schema names a type this tool decodes (null otherwise).
fn entry_json(e: &SavepointEntry, schemas: &Schemas) -> Value {
    let s = schemas.get(&(e.operator.clone(), e.state.clone()));
    let typed = |ty: Option<&str>, b: &[u8]| ty.and_then(|t| to_json(t, b)).unwrap_or(Value::Null);
    let mut element_expiry = Value::Null;
    let value = match s {
        _ if e.element_expiry => {
            // A list whose elements expire one by one: the elements'
            // expiries (known without a schema), and each element typed.
            let env = Envelope {
                expires_at_ms: e.expires_at_ms,
                payload: &e.value,
                elements: true,
            };
            match env.iter_elements().collect::<Result<Vec<_>>>() {
                Ok(elements) => {
                    element_expiry = elements.iter().map(|(at, _)| json!(at)).collect();
                    s.and_then(|s| {
                        elements
                            .iter()
                            .map(|(_, b)| to_json(&s.value_type, b))
                            .collect::<Option<Vec<_>>>()
                    })
                    .map_or(Value::Null, Value::Array)
                }
                // Damaged: value_b64 still has the bytes; the marker keeps
                // an import from reading them as a plain list.
                Err(_) => {
                    element_expiry = json!([]);
                    Value::Null
                }
            }
        }
        Some(s) if s.kind == StateKind::List => {
            list_to_json(&s.value_type, &e.value).unwrap_or(Value::Null)
        }
        _ => typed(s.map(|s| s.value_type.as_str()), &e.value),
    };
    json!({
        "operator": e.operator,
        "state": e.state,
        "key_b64": B64.encode(&e.key),
        "namespace_b64": B64.encode(&e.namespace),
        "user_key_b64": e.user_key.as_ref().map(|u| B64.encode(u)),
        "expires_at_ms": e.expires_at_ms,
        "value_b64": B64.encode(&e.value),
        "key": typed(s.map(|s| s.key_type.as_str()), &e.key),
        "namespace": if e.namespace.is_empty() { Value::Null } else {
            typed(s.and_then(|s| s.namespace_type.as_deref()), &e.namespace)
        },
        "user_key": e.user_key.as_ref().map_or(Value::Null, |u| {
            typed(s.and_then(|s| s.user_key_type.as_deref()), u)
        }),
        "value": value,
        "element_expires_at_ms": element_expiry,
    })
}

/// Output formats of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// JSON lines: a header, one line per state schema, one per entry.
    Jsonl,
    /// Comma-separated values, one row per entry, with a header row.
    Csv,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `highwater export SOURCE`.
pub fn export(
    spec: &str,
    source: &SourceArgs,
    operator: Option<&str>,
    state: Option<&str>,
    format: Format,
    output: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let loaded = load(spec, source, output.is_none())?;
    let schemas = schema_map(&loaded.schemas);
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| Error::io(format!("create {}", p.display()), e))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let io_err = |e| Error::io("write the export", e);
    let keep = |o: &str, s: &str| operator.is_none_or(|x| x == o) && state.is_none_or(|x| x == s);
    match format {
        Format::Jsonl => {
            let header = json!({"savepoint": {
                "format": 1,
                "source_kind": loaded.kind,
                "source_id": loaded.id.0,
                "source_checkpoint": loaded.source_checkpoint.map(|c| c.0),
                "max_parallelism": loaded.max_parallelism,
                "created_at_ms": loaded.created_at_ms,
                "properties": loaded.properties,
            }});
            writeln!(out, "{header}").map_err(io_err)?;
            for s in loaded
                .schemas
                .iter()
                .filter(|s| keep(&s.operator, &s.state))
            {
                writeln!(out, "{}", json!({ "schema": s })).map_err(io_err)?;
            }
            for e in loaded
                .entries
                .iter()
                .filter(|e| keep(&e.operator, &e.state))
            {
                writeln!(out, "{}", entry_json(e, &schemas)).map_err(io_err)?;
            }
        }
        Format::Csv => {
            const COLUMNS: [&str; 12] = [
                "operator",
                "state",
                "key_b64",
                "namespace_b64",
                "user_key_b64",
                "expires_at_ms",
                "value_b64",
                "key",
                "namespace",
                "user_key",
                "value",
                "element_expires_at_ms",
            ];
            writeln!(out, "{}", COLUMNS.join(",")).map_err(io_err)?;
            for e in loaded
                .entries
                .iter()
                .filter(|e| keep(&e.operator, &e.state))
            {
                let j = entry_json(e, &schemas);
                let row: Vec<String> = COLUMNS
                    .iter()
                    .map(|c| match &j[*c] {
                        Value::Null => String::new(),
                        Value::String(s)
                            if c.ends_with("_b64") || *c == "operator" || *c == "state" =>
                        {
                            csv_field(s)
                        }
                        other => csv_field(&other.to_string()),
                    })
                    .collect();
                writeln!(out, "{}", row.join(",")).map_err(io_err)?;
            }
        }
    }
    out.flush().map_err(io_err)?;
    Ok(ExitCode::SUCCESS)
}

fn field_bytes(
    line: usize,
    j: &Value,
    name: &str,
    ty: Option<&str>,
    list: bool,
) -> Result<Option<Vec<u8>>> {
    let bad = |what: String| Error::InvalidArgument(format!("line {line}: {what}"));
    match &j[format!("{name}_b64")] {
        Value::String(s) => {
            return B64
                .decode(s)
                .map(Some)
                .map_err(|e| bad(format!("{name}_b64 is not base64: {e}")));
        }
        Value::Null => {}
        other => return Err(bad(format!("{name}_b64 is not a string: {other}"))),
    }
    let v = &j[name];
    if v.is_null() {
        return Ok(None);
    }
    let ty = ty.ok_or_else(|| bad(format!("{name} has no known type: give {name}_b64")))?;
    let mut out = Vec::new();
    if list {
        let items = v
            .as_array()
            .ok_or_else(|| bad(format!("{name} of a list state is not an array")))?;
        for item in items {
            from_json(ty, item, &mut out).map_err(|e| bad(e.to_string()))?;
        }
    } else {
        from_json(ty, v, &mut out).map_err(|e| bad(e.to_string()))?;
    }
    Ok(Some(out))
}

/// `highwater import FILE --to TARGET`: a savepoint from JSON lines.
pub fn import(
    file: &std::path::Path,
    to: &str,
    to_namespace: &str,
    max_parallelism: Option<u16>,
    json_out: bool,
) -> Result<ExitCode> {
    let f =
        std::fs::File::open(file).map_err(|e| Error::io(format!("open {}", file.display()), e))?;
    let mut header: Option<Value> = None;
    let mut schemas: Vec<StateSchema> = Vec::new();
    let mut entries = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| Error::io(format!("read {}", file.display()), e))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| Error::InvalidArgument(format!("line {n}: {what}"));
        let j: Value = serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        if let Some(h) = j.get("savepoint") {
            header = Some(h.clone());
            continue;
        }
        if let Some(s) = j.get("schema") {
            let s: StateSchema =
                serde_json::from_value(s.clone()).map_err(|e| bad(format!("bad schema: {e}")))?;
            schemas.push(s);
            continue;
        }
        let name = |f: &str| {
            j[f].as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("{f} missing or not a string")))
        };
        let (operator, state) = (name("operator")?, name("state")?);
        let schema = schemas
            .iter()
            .find(|s| s.operator == operator && s.state == state);
        let list = schema.is_some_and(|s| s.kind == StateKind::List);
        let ty = |f: fn(&StateSchema) -> Option<&str>| schema.and_then(f);
        let key = field_bytes(n, &j, "key", ty(|s| Some(&s.key_type)), false)?
            .ok_or_else(|| bad("key missing".into()))?;
        let namespace = field_bytes(
            n,
            &j,
            "namespace",
            ty(|s| s.namespace_type.as_deref()),
            false,
        )?
        .unwrap_or_default();
        let user_key = field_bytes(n, &j, "user_key", ty(|s| s.user_key_type.as_deref()), false)?;
        // A list whose elements expire one by one gives each element's
        // expiry; `value_b64` is then the stored form (elements with their
        // prefixes), a typed `value` the elements.
        let element_expiry = match &j["element_expires_at_ms"] {
            Value::Null => None,
            Value::Array(a) => Some(
                a.iter()
                    .map(|v| v.as_u64())
                    .collect::<Option<Vec<u64>>>()
                    .ok_or_else(|| bad("element_expires_at_ms holds a non-integer".into()))?,
            ),
            other => {
                return Err(bad(format!(
                    "element_expires_at_ms is not an array: {other}"
                )));
            }
        };
        let value = match (&element_expiry, &j["value_b64"]) {
            (Some(expiries), Value::Null) => {
                let ty = ty(|s| Some(&s.value_type))
                    .ok_or_else(|| bad("value has no known type: give value_b64".into()))?;
                let items = j["value"]
                    .as_array()
                    .ok_or_else(|| bad("value of a list state is not an array".into()))?;
                if items.len() != expiries.len() {
                    return Err(bad(format!(
                        "{} elements but {} element expiries",
                        items.len(),
                        expiries.len()
                    )));
                }
                let mut encoded = Vec::new();
                for item in items {
                    let mut b = Vec::new();
                    from_json(ty, item, &mut b).map_err(|e| bad(e.to_string()))?;
                    encoded.push(b);
                }
                let mut stored = Vec::new();
                Envelope::encode_elements_into(
                    expiries
                        .iter()
                        .zip(&encoded)
                        .map(|(at, b)| (*at, b.as_slice())),
                    &mut stored,
                )?;
                // The payload without the envelope's tag and expiry.
                stored.split_off(9)
            }
            _ => field_bytes(n, &j, "value", ty(|s| Some(&s.value_type)), list)?
                .ok_or_else(|| bad("value missing".into()))?,
        };
        let expires_at_ms = match &j["expires_at_ms"] {
            Value::Null => None,
            v => Some(
                v.as_u64()
                    .ok_or_else(|| bad(format!("bad expires_at_ms: {v}")))?,
            ),
        };
        let e = SavepointEntry {
            operator,
            state,
            key,
            namespace,
            user_key,
            expires_at_ms,
            value,
            element_expiry: element_expiry.is_some(),
        };
        if !seen.insert((
            e.operator.clone(),
            e.state.clone(),
            e.key.clone(),
            e.namespace.clone(),
            e.user_key.clone(),
        )) {
            return Err(bad("entry given twice".into()));
        }
        entries.push(e);
    }
    let h = header.unwrap_or(Value::Null);
    let mp = match max_parallelism {
        Some(n) => n,
        None => h["max_parallelism"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or(highwater::core::DEFAULT_MAX_PARALLELISM),
    };
    let mut params = SavepointParams::new(mp, h["created_at_ms"].as_u64().unwrap_or_else(now_ms));
    params.source_checkpoint = h["source_checkpoint"].as_u64().map(CheckpointId);
    if let Some(p) = h["properties"].as_object() {
        params.properties = p
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect();
    }
    let info = write_target(to, to_namespace, &entries, &schemas, &params)?;
    if json_out {
        println!(
            "{}",
            json!({"savepoint": info.id.0, "entries": info.entries, "artifacts": info.artifacts})
        );
    } else {
        println!(
            "savepoint {} written to {to}: {} entries in {} artifacts",
            info.id, info.entries, info.artifacts
        );
    }
    Ok(ExitCode::SUCCESS)
}

type Identity = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);
type StateEntries = BTreeMap<Identity, (Option<u64>, Vec<u8>)>;

fn by_state(entries: Vec<SavepointEntry>) -> BTreeMap<(String, String), StateEntries> {
    let mut out: BTreeMap<(String, String), StateEntries> = BTreeMap::new();
    for e in entries {
        out.entry((e.operator, e.state))
            .or_default()
            .insert((e.key, e.namespace, e.user_key), (e.expires_at_ms, e.value));
    }
    out
}

fn identity_json(id: &Identity) -> Value {
    json!({
        "key_b64": B64.encode(&id.0),
        "namespace_b64": B64.encode(&id.1),
        "user_key_b64": id.2.as_ref().map(|u| B64.encode(u)),
    })
}

/// `highwater diff A B`: per operator and state, the entries added,
/// removed and changed from A to B (entries are matched by key, namespace
/// and map key, whatever their key group).
pub fn diff(
    a: &str,
    a_source: &SourceArgs,
    b: &str,
    b_source: &SourceArgs,
    json_out: bool,
    keys: bool,
) -> Result<ExitCode> {
    let left = by_state(load(a, a_source, json_out)?.entries);
    let right = by_state(load(b, b_source, json_out)?.entries);
    let names: BTreeSet<&(String, String)> = left.keys().chain(right.keys()).collect();
    let empty = StateEntries::new();
    let mut states = Vec::new();
    let mut differs = false;
    for name in names {
        let l = left.get(name).unwrap_or(&empty);
        let r = right.get(name).unwrap_or(&empty);
        let added: Vec<&Identity> = r.keys().filter(|k| !l.contains_key(*k)).collect();
        let removed: Vec<&Identity> = l.keys().filter(|k| !r.contains_key(*k)).collect();
        let changed: Vec<&Identity> = l
            .iter()
            .filter(|(k, v)| r.get(*k).is_some_and(|w| w != *v))
            .map(|(k, _)| k)
            .collect();
        if added.is_empty() && removed.is_empty() && changed.is_empty() {
            continue;
        }
        differs = true;
        let mut s = json!({
            "operator": name.0,
            "state": name.1,
            "added": added.len(),
            "removed": removed.len(),
            "changed": changed.len(),
        });
        if keys {
            let list = |v: &[&Identity]| v.iter().map(|k| identity_json(k)).collect::<Vec<_>>();
            s["added_keys"] = json!(list(&added));
            s["removed_keys"] = json!(list(&removed));
            s["changed_keys"] = json!(list(&changed));
        }
        states.push(s);
    }
    if json_out {
        println!("{}", json!({ "states": states }));
    } else if states.is_empty() {
        println!("no differences");
    } else {
        println!(
            "{:<24} {:<24} {:>9} {:>9} {:>9}",
            "operator", "state", "added", "removed", "changed"
        );
        for s in &states {
            println!(
                "{:<24} {:<24} {:>9} {:>9} {:>9}",
                s["operator"].as_str().unwrap_or_default(),
                s["state"].as_str().unwrap_or_default(),
                s["added"],
                s["removed"],
                s["changed"]
            );
            if keys {
                for what in ["added_keys", "removed_keys", "changed_keys"] {
                    for k in s[what].as_array().into_iter().flatten() {
                        println!("  {} {k}", &what[..what.len() - 5]);
                    }
                }
            }
        }
    }
    Ok(if differs {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_round_trip_through_json() {
        let cases: [(&str, Value); 6] = [
            ("u64", json!(300)),
            ("i32", json!(-7)),
            ("alloc::string::String", json!("hé, \"x\"")),
            ("bool", json!(true)),
            ("alloc::vec::Vec<u8>", json!([1, 2, 255])),
            ("f64", json!(1.5)),
        ];
        for (ty, v) in cases {
            let mut bytes = Vec::new();
            from_json(ty, &v, &mut bytes).unwrap();
            assert_eq!(to_json(ty, &bytes), Some(v.clone()), "{ty}");
        }
        // Trailing bytes, unknown types and wrong JSON are refused.
        assert_eq!(to_json("u8", &[1, 2]), None);
        assert_eq!(to_json("my::Type", &[1]), None);
        assert!(from_json("u8", &json!(300), &mut Vec::new()).is_err());
        assert!(from_json("my::Type", &json!(1), &mut Vec::new()).is_err());
        assert_eq!(list_to_json("u8", &[1, 2, 3]), Some(json!([1, 2, 3])));
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
