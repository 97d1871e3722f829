//! State schemas: what each state's bytes mean.
//!
//! Keys, namespaces and values are postcard encodings, which are not
//! self-describing: the bytes of the `u64` 0 also decode as the empty
//! `String`. So every state records, when its handle is created, a
//! [`StateSchema`]: its kind, the Rust type names of its key, namespace and
//! value (and map user key) and the descriptor's schema version. The
//! schemas of a job go into every checkpoint manifest (format version 2)
//! and every savepoint, and a [`SchemaRegistry`] refuses, with an
//! [`Error::SchemaMismatch`], a handle or a restore whose schema differs
//! from the one the state was registered or stored with.
//!
//! Type names are [`std::any::type_name`]: stable for a given build and
//! type path, but a type moved to another module (or a compiler that
//! renders names differently) has a new name. Such a change is a schema
//! change like any other: give the descriptor a new schema version and a
//! migration, or restore with the same names (see `docs/savepoints.md`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::{StateBackend, WriteBatch};
use crate::error::{Error, Result};
use crate::key::StateKey;
use crate::ttl::{Envelope, TtlConfig};

/// Which kind of state a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StateKind {
    /// [`ValueState`](crate::ValueState).
    Value,
    /// [`ListState`](crate::ListState).
    List,
    /// [`MapState`](crate::MapState).
    Map,
    /// [`ReducingState`](crate::ReducingState).
    Reducing,
    /// [`AggregatingState`](crate::AggregatingState) (the value is the
    /// accumulator).
    Aggregating,
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
            StateKind::Reducing => "reducing",
            StateKind::Aggregating => "aggregating",
        })
    }
}

/// What one state of one operator holds: kind, type names, schema version
/// and TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSchema {
    /// Operator owning the state.
    pub operator: String,
    /// State name.
    pub state: String,
    /// Kind of state.
    pub kind: StateKind,
    /// Type name of the key.
    pub key_type: String,
    /// Type name of the namespace, once one was used (`None`: only the
    /// empty namespace so far).
    pub namespace_type: Option<String>,
    /// Type name of a map state's user key (`None` for other kinds).
    pub user_key_type: Option<String>,
    /// Type name of the value (list element, map value, accumulator).
    pub value_type: String,
    /// The descriptor's schema version (1 unless set).
    pub version: u32,
    /// The descriptor's time-to-live, if any.
    pub ttl: Option<TtlConfig>,
}

impl StateSchema {
    /// A short description for errors: kind, types and version.
    pub fn describe(&self) -> String {
        let mut s = format!("{}<key={}", self.kind, self.key_type);
        if let Some(ns) = &self.namespace_type {
            s.push_str(&format!(", namespace={ns}"));
        }
        if let Some(uk) = &self.user_key_type {
            s.push_str(&format!(", user_key={uk}"));
        }
        s.push_str(&format!(", value={}> v{}", self.value_type, self.version));
        s
    }

    /// True when `self` and `other` read the same bytes the same way: same
    /// kind, key, user key and value types and schema version, and the same
    /// namespace type when both have one. TTL settings may differ (the
    /// stored envelope is the same with or without TTL).
    pub fn compatible_with(&self, other: &StateSchema) -> bool {
        self.kind == other.kind
            && self.key_type == other.key_type
            && self.user_key_type == other.user_key_type
            && self.value_type == other.value_type
            && self.version == other.version
            && match (&self.namespace_type, &other.namespace_type) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The typed error for requesting `requested` where `self` is stored.
    pub fn mismatch(&self, requested: &StateSchema) -> Error {
        Error::SchemaMismatch {
            operator: self.operator.clone(),
            state: self.state.clone(),
            stored: self.describe(),
            requested: requested.describe(),
        }
    }

    /// Checks the invariants a decoder cannot express in types: bounded,
    /// non-empty names (as [`check_name`](crate::key) requires of callers).
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(Error::corrupt("state schema", detail));
        for (what, name) in [("operator", &self.operator), ("state", &self.state)] {
            if name.is_empty() || name.len() > crate::key::MAX_NAME_LEN {
                return bad(format!(
                    "{what} name must be 1..={} bytes: len={}",
                    crate::key::MAX_NAME_LEN,
                    name.len()
                ));
            }
        }
        if self.version == 0 {
            return bad(format!(
                "schema version 0: operator={} state={}",
                self.operator, self.state
            ));
        }
        Ok(())
    }
}

/// One step of a state's schema evolution: values of schema version
/// `from` (type `Old`) become values of version `from + 1` (type `New`).
/// Registered with a descriptor's `migrate_from`; see `docs/savepoints.md`.
#[derive(Clone)]
pub struct Migration {
    from: u32,
    old_type: &'static str,
    new_type: &'static str,
    /// Decodes one `Old` from the front of the bytes and returns the
    /// encoding of the `New` it becomes and the bytes consumed.
    step: MigrateStep,
}

/// A type-erased migration step: decodes one old value from the front of
/// the bytes, returns the new value's encoding and the bytes consumed.
type MigrateStep = Arc<dyn Fn(&[u8]) -> Result<(Vec<u8>, usize)> + Send + Sync>;

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("from", &self.from)
            .field("old_type", &self.old_type)
            .field("new_type", &self.new_type)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Migration {
    fn eq(&self, other: &Migration) -> bool {
        self.from == other.from
            && self.old_type == other.old_type
            && self.new_type == other.new_type
            && Arc::ptr_eq(&self.step, &other.step)
    }
}

impl Eq for Migration {}

impl Migration {
    /// A migration of values of version `from` (type `Old`) to version
    /// `from + 1` (type `New`) by `f`.
    pub fn new<Old, New, F>(from: u32, f: F) -> Migration
    where
        Old: DeserializeOwned,
        New: Serialize,
        F: Fn(Old) -> New + Send + Sync + 'static,
    {
        Migration {
            from,
            old_type: std::any::type_name::<Old>(),
            new_type: std::any::type_name::<New>(),
            step: Arc::new(move |bytes: &[u8]| {
                let (old, rest) = postcard::take_from_bytes::<Old>(bytes).map_err(|e| {
                    Error::serialization(
                        format!(
                            "migrate from version {from}: decode {}",
                            std::any::type_name::<Old>()
                        ),
                        e,
                    )
                })?;
                let new = postcard::to_allocvec(&f(old)).map_err(|e| {
                    Error::serialization(
                        format!(
                            "migrate from version {from}: encode {}",
                            std::any::type_name::<New>()
                        ),
                        e,
                    )
                })?;
                Ok((new, bytes.len() - rest.len()))
            }),
        }
    }

    /// The version migrated from.
    pub fn from_version(&self) -> u32 {
        self.from
    }
}

/// The migrations a restore applies: for each state stored with an older
/// schema version, the chain of steps up to the registered version.
#[derive(Debug, Clone, Default)]
pub struct MigrationPlan {
    states: BTreeMap<SchemaKey, (StateKind, Vec<Migration>)>,
    /// The schemas of the state once migrated.
    pub schemas: Vec<StateSchema>,
}

impl MigrationPlan {
    /// True when nothing is migrated.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// True when the state loaded as `operator`/`state` is migrated (its
    /// entries go through [`migrate`](Self::migrate); others are kept as
    /// they are).
    pub fn migrates(&self, operator: &str, state: &str) -> bool {
        self.states
            .contains_key(&(operator.to_string(), state.to_string()))
    }

    /// The states migrated, with the versions they go from and to.
    pub fn migrated(&self) -> Vec<(String, String, u32, u32)> {
        self.states
            .iter()
            .map(|((o, s), (_, steps))| {
                let from = steps.first().map_or(0, |m| m.from);
                (o.clone(), s.clone(), from, from + steps.len() as u32)
            })
            .collect()
    }

    /// Migrates, in place, every entry of the migrated states that
    /// `backend` holds (a checkpoint just restored into it), key group by
    /// key group of `0..max_parallelism`, one write batch per key group;
    /// returns how many entries were rewritten. A value that does not
    /// decode as the stored type fails with the backend partly migrated:
    /// the caller clears it.
    pub fn migrate_backend(&self, backend: &dyn StateBackend, max_parallelism: u16) -> Result<u64> {
        let mut rewritten = 0u64;
        for (operator, state) in self.states.keys() {
            let state_len = u8::try_from(state.len()).map_err(|_| {
                Error::InvalidArgument(format!("state name longer than 255 bytes: {state}"))
            })?;
            for kg in 0..max_parallelism {
                let mut prefix = crate::key::operator_prefix(crate::KeyGroup(kg), operator)?;
                // The length byte keeps a state whose name starts with this
                // one out of the prefix.
                prefix.push(state_len);
                prefix.extend_from_slice(state.as_bytes());
                let mut batch = WriteBatch::new();
                for (k, v) in backend.scan_prefix(&prefix)? {
                    let sk = StateKey::decode(&k)?;
                    if let Some(new) = self.migrate(&sk, &v)? {
                        batch.put(k.clone(), new);
                        rewritten += 1;
                    }
                }
                if !batch.is_empty() {
                    backend.write_batch(batch)?;
                }
            }
        }
        Ok(rewritten)
    }

    /// The migrated stored value (an envelope) of the entry `key`, or
    /// `None` when its state is not migrated. The expiry is kept; every
    /// element of a list is migrated.
    pub fn migrate(&self, key: &StateKey<'_>, value: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some((kind, steps)) = self
            .states
            .get(&(key.operator.to_string(), key.state.to_string()))
        else {
            return Ok(None);
        };
        let env = Envelope::decode(value)?;
        if env.elements {
            // A list whose elements expire one by one: migrate each element
            // on its own, keeping its expiry.
            let mut migrated = Vec::new();
            for element in env.iter_elements() {
                let (at, bytes) = element?;
                let mut payload = bytes.to_vec();
                for step in steps {
                    let (new, used) = (step.step)(&payload)?;
                    if used != payload.len() {
                        return Err(Error::serialization(
                            format!(
                                "migrate {}/{} from version {}",
                                key.operator, key.state, step.from
                            ),
                            format!(
                                "trailing bytes after a list element: len={}",
                                payload.len() - used
                            ),
                        ));
                    }
                    payload = new;
                }
                migrated.push((at, payload));
            }
            let mut out = Vec::new();
            Envelope::encode_elements_into(
                migrated.iter().map(|(at, b)| (*at, b.as_slice())),
                &mut out,
            )?;
            return Ok(Some(out));
        }
        let mut payload = env.payload.to_vec();
        for step in steps {
            let mut out = Vec::with_capacity(payload.len());
            let mut rest: &[u8] = &payload;
            loop {
                let (new, used) = (step.step)(rest)?;
                out.extend_from_slice(&new);
                rest = &rest[used..];
                if rest.is_empty() {
                    break;
                }
                if *kind != StateKind::List {
                    return Err(Error::serialization(
                        format!(
                            "migrate {}/{} from version {}",
                            key.operator, key.state, step.from
                        ),
                        format!("trailing bytes after the value: len={}", rest.len()),
                    ));
                }
            }
            payload = out;
        }
        let mut out = Vec::with_capacity(payload.len() + 9);
        Envelope::encode_into(env.expires_at_ms, &payload, &mut out);
        Ok(Some(out))
    }
}

type SchemaKey = (String, String);

#[derive(Debug, Default)]
struct Registry {
    /// Schemas of handles created in this process.
    registered: BTreeMap<SchemaKey, StateSchema>,
    /// Migrations registered with those handles' descriptors.
    migrations: BTreeMap<SchemaKey, Vec<Migration>>,
    /// Schemas of the state last restored (from a manifest or savepoint).
    stored: BTreeMap<SchemaKey, StateSchema>,
}

/// The schemas of one job's states: those registered by handles, and those
/// of the last restored checkpoint or savepoint. Shared by every
/// [`KeyedStateContext`](crate::KeyedStateContext) of a job (the facade's
/// state manager owns one); checkpoints record [`schemas`](Self::schemas).
#[derive(Debug, Default)]
pub struct SchemaRegistry {
    inner: Mutex<Registry>,
}

impl SchemaRegistry {
    /// An empty registry.
    pub fn new() -> Arc<SchemaRegistry> {
        Arc::new(SchemaRegistry::default())
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `schema` for its state, or fails with
    /// [`Error::SchemaMismatch`] when the state was registered or restored
    /// with an incompatible one ([`StateSchema::compatible_with`]).
    pub fn register(&self, schema: StateSchema) -> Result<()> {
        self.register_with(schema, &[])
    }

    /// Records `schema` with the migrations that bring older versions of
    /// the state up to it (used by [`plan`](Self::plan) on restore).
    pub fn register_with(&self, schema: StateSchema, migrations: &[Migration]) -> Result<()> {
        let mut r = self.lock();
        let key = (schema.operator.clone(), schema.state.clone());
        let mut schema = schema;
        for known in [r.registered.get(&key), r.stored.get(&key)]
            .into_iter()
            .flatten()
        {
            if !known.compatible_with(&schema) {
                return Err(known.mismatch(&schema));
            }
            if schema.namespace_type.is_none() {
                schema.namespace_type.clone_from(&known.namespace_type);
            }
        }
        if !migrations.is_empty() {
            r.migrations.insert(key.clone(), migrations.to_vec());
        }
        r.registered.insert(key, schema);
        Ok(())
    }

    /// Records that `operator`'s `state` is used with namespaces of type
    /// `namespace_type`, or fails when another namespace type is on record.
    pub fn register_namespace(
        &self,
        operator: &str,
        state: &str,
        namespace_type: &str,
    ) -> Result<()> {
        let mut r = self.lock();
        let key = (operator.to_string(), state.to_string());
        let Registry {
            registered, stored, ..
        } = &mut *r;
        for map in [&mut *registered, &mut *stored] {
            let Some(known) = map.get_mut(&key) else {
                continue;
            };
            match &known.namespace_type {
                Some(t) if t != namespace_type => {
                    let mut requested = known.clone();
                    requested.namespace_type = Some(namespace_type.to_string());
                    return Err(known.mismatch(&requested));
                }
                Some(_) => {}
                None => known.namespace_type = Some(namespace_type.to_string()),
            }
        }
        Ok(())
    }

    /// Plans the migrations of `stored` (the schemas of a checkpoint or
    /// savepoint about to be restored) to the registered schemas. A stored state of an
    /// older version needs a registered migration from each version on,
    /// whose types chain from the stored value type to the registered one;
    /// a newer stored version, a missing migration, a type that does not
    /// chain or any other difference is an [`Error::SchemaMismatch`].
    /// Nothing is recorded.
    pub fn plan(&self, stored: &[StateSchema]) -> Result<MigrationPlan> {
        let r = self.lock();
        let mut plan = MigrationPlan::default();
        for s in stored {
            let key = (s.operator.clone(), s.state.clone());
            let Some(reg) = r.registered.get(&key) else {
                plan.schemas.push(s.clone());
                continue;
            };
            if s.compatible_with(reg) {
                plan.schemas.push(s.clone());
                continue;
            }
            let mut same_but_version = s.clone();
            same_but_version.version = reg.version;
            same_but_version.value_type.clone_from(&reg.value_type);
            let why = |detail: String| {
                let mut requested = reg.clone();
                requested.value_type = format!("{} ({detail})", reg.value_type);
                Err(s.mismatch(&requested))
            };
            if !same_but_version.compatible_with(reg) {
                return Err(s.mismatch(reg));
            }
            if s.version > reg.version {
                return why(format!(
                    "stored version {} is newer than the registered {}",
                    s.version, reg.version
                ));
            }
            let registered = r.migrations.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            let mut steps = Vec::new();
            let mut ty = s.value_type.as_str();
            for v in s.version..reg.version {
                let Some(m) = registered.iter().find(|m| m.from == v) else {
                    return why(format!("no migration from version {v}"));
                };
                if m.old_type != ty {
                    return why(format!(
                        "migration from version {v} reads {} but the state holds {ty}",
                        m.old_type
                    ));
                }
                ty = m.new_type;
                steps.push(m.clone());
            }
            if ty != reg.value_type {
                return why(format!("migrations end with {ty}"));
            }
            let mut migrated = reg.clone();
            if migrated.namespace_type.is_none() {
                migrated.namespace_type.clone_from(&s.namespace_type);
            }
            plan.schemas.push(migrated);
            plan.states.insert(key, (s.kind, steps));
        }
        Ok(plan)
    }

    /// Replaces the stored schemas with those of the state just restored.
    pub fn set_stored(&self, stored: &[StateSchema]) {
        let mut r = self.lock();
        r.stored = stored
            .iter()
            .map(|s| ((s.operator.clone(), s.state.clone()), s.clone()))
            .collect();
    }

    /// The schema on record for `operator`'s `state` (registered first,
    /// else stored).
    pub fn get(&self, operator: &str, state: &str) -> Option<StateSchema> {
        let r = self.lock();
        let key = (operator.to_string(), state.to_string());
        r.registered
            .get(&key)
            .or_else(|| r.stored.get(&key))
            .cloned()
    }

    /// Every schema on record, sorted by operator and state: the registered
    /// ones, and the stored ones of states not registered since the restore
    /// (their data is still in the backend).
    pub fn schemas(&self) -> Vec<StateSchema> {
        let r = self.lock();
        let mut all = r.stored.clone();
        for (k, v) in &r.registered {
            all.insert(k.clone(), v.clone());
        }
        all.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(value: &str) -> StateSchema {
        StateSchema {
            operator: "op".into(),
            state: "s".into(),
            kind: StateKind::Value,
            key_type: "alloc::string::String".into(),
            namespace_type: None,
            user_key_type: None,
            value_type: value.into(),
            version: 1,
            ttl: None,
        }
    }

    #[test]
    fn a_second_registration_with_another_type_is_refused() {
        let r = SchemaRegistry::new();
        r.register(schema("u64")).unwrap();
        r.register(schema("u64")).unwrap();
        let err = r.register(schema("alloc::string::String")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::SchemaMismatch);
        let msg = err.to_string();
        assert!(
            msg.contains("operator=op") && msg.contains("state=s"),
            "{msg}"
        );
        assert!(msg.contains("value=u64> v1"), "{msg}");
        assert!(msg.contains("value=alloc::string::String> v1"), "{msg}");
    }

    #[test]
    fn stored_schemas_are_checked_and_kept_until_registered() {
        let r = SchemaRegistry::new();
        r.register(schema("u64")).unwrap();
        assert!(r.plan(&[schema("i32")]).is_err());
        assert!(r.plan(&[schema("u64")]).unwrap().is_empty());
        let mut other = schema("i32");
        other.state = "t".into();
        r.set_stored(&[other.clone()]);
        assert_eq!(r.schemas(), vec![schema("u64"), other.clone()]);
        // A handle for the stored state must agree with it.
        let mut wrong = other.clone();
        wrong.value_type = "u8".into();
        assert!(r.register(wrong).is_err());
        let mut newer = other.clone();
        newer.version = 2;
        assert!(r.register(newer).is_err());
    }

    #[test]
    fn namespaces_are_recorded_once() {
        let r = SchemaRegistry::new();
        r.register(schema("u64")).unwrap();
        r.register_namespace("op", "s", "u32").unwrap();
        r.register_namespace("op", "s", "u32").unwrap();
        let err = r.register_namespace("op", "s", "u64").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::SchemaMismatch);
        assert_eq!(
            r.get("op", "s").unwrap().namespace_type.as_deref(),
            Some("u32")
        );
    }
}
