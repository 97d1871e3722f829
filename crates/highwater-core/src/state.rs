//! Typed keyed state: descriptors and the handles an operator uses.
//!
//! A handle is bound to one operator and one state name and addresses
//! entries by the user's key (and optionally a namespace such as a window).
//! Keys, namespaces and values are serde types encoded with postcard; the
//! key group is derived from the encoded key, so every handle of every
//! operator agrees on which subtask owns a key.
//!
//! ```
//! use std::sync::Arc;
//! use highwater_core::{KeyedStateContext, ValueStateDescriptor, StateBackend};
//! # fn demo(backend: Arc<dyn StateBackend>) -> highwater_core::Result<()> {
//! let ctx = KeyedStateContext::new(backend, "word-count", 128)?;
//! let counts = ctx.value_state::<String, u64>(&ValueStateDescriptor::new("count"))?;
//! let n = counts.get(&"hello".to_string())?.unwrap_or(0);
//! counts.update(&"hello".to_string(), &(n + 1))?;
//! # Ok(()) }
//! ```

use std::any::type_name;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{StateBackend, WriteBatch};
use crate::error::{Error, Result};
use crate::key::{StateKey, check_name};
use crate::keygroup::{KeyGroup, KeyGroupRange, key_group_for};
use crate::schema::{Migration, SchemaRegistry, StateKind, StateSchema};
use crate::ttl::{Clock, Envelope, SystemClock, TtlConfig, TtlUpdate};

fn encode<T: Serialize + ?Sized>(what: &str, v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|source| Error::Serialization {
        context: format!("encode {what}"),
        source: source.into(),
    })
}

/// Decodes exactly one `T` from `bytes`: bytes left over mean the stored
/// value is not a `T` (postcard is not self-describing), and are an error.
fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|source| Error::Serialization {
        context: format!("decode {what}"),
        source: source.into(),
    })?;
    if !rest.is_empty() {
        return Err(Error::Serialization {
            context: format!("decode {what}"),
            source: format!(
                "trailing bytes after the value: type={} len={} trailing={}",
                std::any::type_name::<T>(),
                bytes.len(),
                rest.len()
            )
            .into(),
        });
    }
    Ok(v)
}

/// Name, TTL, schema version and migrations shared by every descriptor
/// kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorCommon {
    /// State name, unique within its operator.
    pub name: String,
    /// Optional time-to-live of entries.
    pub ttl: Option<TtlConfig>,
    /// Schema version of the stored value type (1 unless set): recorded
    /// with the state, see [`crate::schema`].
    pub version: u32,
    /// Migrations from older schema versions, applied when a savepoint of
    /// an older version is restored.
    pub migrations: Vec<Migration>,
}

impl DescriptorCommon {
    fn new(name: String) -> Self {
        DescriptorCommon {
            name,
            ttl: None,
            version: 1,
            migrations: Vec::new(),
        }
    }
}

macro_rules! descriptor_common_methods {
    () => {
        /// The state name.
        pub fn name(&self) -> &str {
            &self.common.name
        }

        /// Gives entries a time-to-live.
        pub fn with_ttl(mut self, ttl: TtlConfig) -> Self {
            self.common.ttl = Some(ttl);
            self
        }

        /// Sets the schema version of the value type (1 by default). State
        /// stored with another version is refused with
        /// [`Error::SchemaMismatch`] (see `docs/savepoints.md`).
        pub fn with_schema_version(mut self, version: u32) -> Self {
            self.common.version = version;
            self
        }

        /// The schema version of the value type.
        pub fn schema_version(&self) -> u32 {
            self.common.version
        }

        /// Registers how values of schema version `from` (type `Old`)
        /// become values of version `from + 1` (type `New`). A restore of a
        /// savepoint holding this state at an older version applies the
        /// chain of migrations from its version to this descriptor's, to
        /// every entry, before anything is loaded (see
        /// `docs/savepoints.md`). The types must chain: the first `Old` is
        /// the stored value type, the last `New` this descriptor's.
        pub fn migrate_from<Old, New>(
            mut self,
            from: u32,
            f: impl Fn(Old) -> New + Send + Sync + 'static,
        ) -> Self
        where
            Old: serde::de::DeserializeOwned,
            New: Serialize,
        {
            self.common.migrations.retain(|m| m.from_version() != from);
            self.common.migrations.push(Migration::new(from, f));
            self
        }
    };
}

/// Declares a [`ValueState`]: one value per key.
#[derive(Debug, Clone)]
pub struct ValueStateDescriptor<V> {
    common: DescriptorCommon,
    _v: PhantomData<fn() -> V>,
}

impl<V> ValueStateDescriptor<V> {
    /// A descriptor named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ValueStateDescriptor {
            common: DescriptorCommon::new(name.into()),
            _v: PhantomData,
        }
    }
    descriptor_common_methods!();
}

/// Declares a [`ListState`]: a list of elements per key.
#[derive(Debug, Clone)]
pub struct ListStateDescriptor<T> {
    common: DescriptorCommon,
    _t: PhantomData<fn() -> T>,
}

impl<T> ListStateDescriptor<T> {
    /// A descriptor named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ListStateDescriptor {
            common: DescriptorCommon::new(name.into()),
            _t: PhantomData,
        }
    }
    descriptor_common_methods!();
}

/// Declares a [`MapState`]: a map from user keys to values per key.
#[derive(Debug, Clone)]
pub struct MapStateDescriptor<UK, UV> {
    common: DescriptorCommon,
    _m: PhantomData<fn() -> (UK, UV)>,
}

impl<UK, UV> MapStateDescriptor<UK, UV> {
    /// A descriptor named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        MapStateDescriptor {
            common: DescriptorCommon::new(name.into()),
            _m: PhantomData,
        }
    }
    descriptor_common_methods!();
}

/// The combining function of a [`ReducingState`].
pub type ReduceFn<T> = Arc<dyn Fn(T, T) -> T + Send + Sync>;

/// Declares a [`ReducingState`]: values folded with a reduce function.
#[derive(Clone)]
pub struct ReducingStateDescriptor<T> {
    common: DescriptorCommon,
    reduce: ReduceFn<T>,
}

impl<T> std::fmt::Debug for ReducingStateDescriptor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReducingStateDescriptor")
            .field("common", &self.common)
            .finish_non_exhaustive()
    }
}

impl<T> ReducingStateDescriptor<T> {
    /// A descriptor named `name` folding values with `reduce`.
    pub fn new(
        name: impl Into<String>,
        reduce: impl Fn(T, T) -> T + Send + Sync + 'static,
    ) -> Self {
        ReducingStateDescriptor {
            common: DescriptorCommon::new(name.into()),
            reduce: Arc::new(reduce),
        }
    }
    descriptor_common_methods!();
}

/// An aggregation: inputs are added to an accumulator, which yields a result.
pub trait AggregateFunction<In>: Send + Sync + 'static {
    /// The stored accumulator.
    type Acc: Serialize + DeserializeOwned;
    /// The result type.
    type Out;
    /// A fresh accumulator.
    fn create_accumulator(&self) -> Self::Acc;
    /// Adds one input.
    fn add(&self, input: &In, acc: Self::Acc) -> Self::Acc;
    /// The result of an accumulator.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
}

/// Declares an [`AggregatingState`].
pub struct AggregatingStateDescriptor<In, F: AggregateFunction<In>> {
    common: DescriptorCommon,
    func: Arc<F>,
    _in: PhantomData<fn(In)>,
}

impl<In, F: AggregateFunction<In>> Clone for AggregatingStateDescriptor<In, F> {
    fn clone(&self) -> Self {
        AggregatingStateDescriptor {
            common: self.common.clone(),
            func: self.func.clone(),
            _in: PhantomData,
        }
    }
}

impl<In, F: AggregateFunction<In>> std::fmt::Debug for AggregatingStateDescriptor<In, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatingStateDescriptor")
            .field("common", &self.common)
            .finish_non_exhaustive()
    }
}

impl<In, F: AggregateFunction<In>> AggregatingStateDescriptor<In, F> {
    /// A descriptor named `name` aggregating with `func`.
    pub fn new(name: impl Into<String>, func: F) -> Self {
        AggregatingStateDescriptor {
            common: DescriptorCommon::new(name.into()),
            func: Arc::new(func),
            _in: PhantomData,
        }
    }
    descriptor_common_methods!();
}

/// The operator-level entry point to keyed state: binds a backend, an
/// operator name and the job's key-group count, and hands out typed handles.
#[derive(Clone)]
pub struct KeyedStateContext {
    backend: Arc<dyn StateBackend>,
    operator: Arc<str>,
    max_parallelism: u16,
    clock: Arc<dyn Clock>,
    schemas: Arc<SchemaRegistry>,
}

impl std::fmt::Debug for KeyedStateContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStateContext")
            .field("backend", &self.backend.name())
            .field("operator", &self.operator)
            .field("max_parallelism", &self.max_parallelism)
            .finish()
    }
}

impl KeyedStateContext {
    /// A context for `operator` over `backend`, using the system clock.
    pub fn new(
        backend: Arc<dyn StateBackend>,
        operator: &str,
        max_parallelism: u16,
    ) -> Result<Self> {
        Self::with_clock(backend, operator, max_parallelism, Arc::new(SystemClock))
    }

    /// Same as [`KeyedStateContext::new`] with an explicit clock for TTL.
    pub fn with_clock(
        backend: Arc<dyn StateBackend>,
        operator: &str,
        max_parallelism: u16,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        check_name("operator", operator)?;
        if max_parallelism == 0 {
            return Err(Error::InvalidArgument("max_parallelism is zero".into()));
        }
        Ok(KeyedStateContext {
            backend,
            operator: operator.into(),
            max_parallelism,
            clock,
            schemas: SchemaRegistry::new(),
        })
    }

    /// The same context recording its states' schemas in `schemas` (a job
    /// shares one registry between all its contexts, so that two handles
    /// of one state with different types are refused; a context made by
    /// [`new`](Self::new) has a registry of its own).
    pub fn with_schemas(mut self, schemas: Arc<SchemaRegistry>) -> Self {
        self.schemas = schemas;
        self
    }

    /// The schema registry handles of this context register with.
    pub fn schemas(&self) -> &Arc<SchemaRegistry> {
        &self.schemas
    }

    /// The number of key groups.
    pub fn max_parallelism(&self) -> u16 {
        self.max_parallelism
    }

    /// The operator name.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn StateBackend> {
        &self.backend
    }

    /// The key group a user key belongs to.
    pub fn key_group<K: Serialize + ?Sized>(&self, key: &K) -> Result<KeyGroup> {
        Ok(key_group_for(&encode("key", key)?, self.max_parallelism))
    }

    fn base(
        &self,
        common: &DescriptorCommon,
        kind: StateKind,
        key_type: &str,
        user_key_type: Option<&str>,
        value_type: &str,
    ) -> Result<Base> {
        check_name("state", &common.name)?;
        if common.version == 0 {
            return Err(Error::InvalidArgument(format!(
                "schema version must be at least 1: operator={} state={}",
                self.operator, common.name
            )));
        }
        self.schemas.register_with(
            StateSchema {
                operator: self.operator.to_string(),
                state: common.name.clone(),
                kind,
                key_type: key_type.to_string(),
                namespace_type: None,
                user_key_type: user_key_type.map(str::to_string),
                value_type: value_type.to_string(),
                version: common.version,
                ttl: common.ttl,
            },
            &common.migrations,
        )?;
        Ok(Base {
            ctx: self.clone(),
            state: common.name.as_str().into(),
            ttl: common.ttl,
            namespace: Vec::new(),
        })
    }

    /// A [`ValueState`] handle.
    pub fn value_state<K: ?Sized, V>(
        &self,
        d: &ValueStateDescriptor<V>,
    ) -> Result<ValueState<K, V>> {
        Ok(ValueState {
            base: self.base(
                &d.common,
                StateKind::Value,
                type_name::<K>(),
                None,
                type_name::<V>(),
            )?,
            _t: PhantomData,
        })
    }

    /// A [`ListState`] handle.
    pub fn list_state<K: ?Sized, T>(&self, d: &ListStateDescriptor<T>) -> Result<ListState<K, T>> {
        Ok(ListState {
            base: self.base(
                &d.common,
                StateKind::List,
                type_name::<K>(),
                None,
                type_name::<T>(),
            )?,
            _t: PhantomData,
        })
    }

    /// A [`MapState`] handle.
    pub fn map_state<K: ?Sized, UK, UV>(
        &self,
        d: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<K, UK, UV>> {
        Ok(MapState {
            base: self.base(
                &d.common,
                StateKind::Map,
                type_name::<K>(),
                Some(type_name::<UK>()),
                type_name::<UV>(),
            )?,
            _t: PhantomData,
        })
    }

    /// A [`ReducingState`] handle.
    pub fn reducing_state<K: ?Sized, T>(
        &self,
        d: &ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<K, T>> {
        Ok(ReducingState {
            base: self.base(
                &d.common,
                StateKind::Reducing,
                type_name::<K>(),
                None,
                type_name::<T>(),
            )?,
            reduce: d.reduce.clone(),
            _t: PhantomData,
        })
    }

    /// An [`AggregatingState`] handle.
    pub fn aggregating_state<K: ?Sized, In, F: AggregateFunction<In>>(
        &self,
        d: &AggregatingStateDescriptor<In, F>,
    ) -> Result<AggregatingState<K, In, F>> {
        Ok(AggregatingState {
            base: self.base(
                &d.common,
                StateKind::Aggregating,
                type_name::<K>(),
                None,
                type_name::<F::Acc>(),
            )?,
            func: d.func.clone(),
            _t: PhantomData,
        })
    }
}

/// What every handle shares: context, state name, TTL and namespace.
#[derive(Clone)]
struct Base {
    ctx: KeyedStateContext,
    state: Arc<str>,
    ttl: Option<TtlConfig>,
    namespace: Vec<u8>,
}

impl Base {
    fn set_namespace<N: Serialize + ?Sized>(&mut self, ns: &N) -> Result<()> {
        self.ctx
            .schemas
            .register_namespace(&self.ctx.operator, &self.state, type_name::<N>())?;
        self.namespace = encode("namespace", ns)?;
        Ok(())
    }

    /// The encoded key for `key` and (for map entries) `user_key`.
    fn full_key<K: Serialize + ?Sized>(&self, key: &K, user_key: &[u8]) -> Result<Vec<u8>> {
        let key_bytes = encode("key", key)?;
        StateKey {
            key_group: key_group_for(&key_bytes, self.ctx.max_parallelism),
            operator: &self.ctx.operator,
            state: &self.state,
            key: &key_bytes,
            namespace: &self.namespace,
            user_key,
        }
        .encode()
    }

    fn envelope(&self, payload: &[u8]) -> Vec<u8> {
        let expiry = self.ttl.map(|t| t.expiry_from(self.ctx.clock.now_ms()));
        let mut out = Vec::new();
        Envelope::encode_into(expiry, payload, &mut out);
        out
    }

    /// Interprets a stored value: the payload if alive, `None` if expired.
    /// Refreshes the expiry on read when the TTL asks for it.
    fn alive(&self, key: &[u8], stored: &[u8]) -> Result<Option<Vec<u8>>> {
        let env = Envelope::decode(stored)?;
        if env.is_expired(self.ctx.clock.now_ms()) {
            // Reclaim the space now instead of waiting for a snapshot.
            self.ctx.backend.delete(key)?;
            return Ok(None);
        }
        if let Some(ttl) = self.ttl
            && ttl.update == TtlUpdate::OnReadAndWrite
        {
            self.ctx.backend.put(key, &self.envelope(env.payload))?;
        }
        Ok(Some(env.payload.to_vec()))
    }

    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.ctx.backend.get(key)? {
            Some(stored) => self.alive(key, &stored),
            None => Ok(None),
        }
    }

    fn write(&self, key: &[u8], payload: &[u8]) -> Result<()> {
        self.ctx.backend.put(key, &self.envelope(payload))
    }

    /// Calls `f` with every distinct key of this state that has a live
    /// entry in this handle's namespace, key group by key group in `range`
    /// (in encoded-key order within a key group).
    fn visit_keys<K: DeserializeOwned>(
        &self,
        range: KeyGroupRange,
        f: &mut dyn FnMut(K) -> Result<()>,
    ) -> Result<()> {
        if range.end > self.ctx.max_parallelism {
            return Err(Error::InvalidArgument(format!(
                "key groups {range} beyond max_parallelism={}",
                self.ctx.max_parallelism
            )));
        }
        let now = self.ctx.clock.now_ms();
        for kg in range.iter() {
            let mut prefix = crate::key::operator_prefix(kg, &self.ctx.operator)?;
            prefix.push(self.state.len() as u8);
            prefix.extend_from_slice(self.state.as_bytes());
            let mut last: Option<Vec<u8>> = None;
            for (k, v) in self.ctx.backend.scan_prefix(&prefix)? {
                let sk = StateKey::decode(&k)?;
                // The length byte before the state name keeps another
                // state whose name starts with this one out of the prefix.
                if sk.namespace != self.namespace.as_slice()
                    || last.as_deref() == Some(sk.key)
                    || Envelope::decode(&v)?.is_expired(now)
                {
                    continue;
                }
                last = Some(sk.key.to_vec());
                f(decode("key", sk.key)?)?;
            }
        }
        Ok(())
    }
}

macro_rules! namespace_method {
    () => {
        /// The same state in namespace `ns` (for example a window): entries
        /// of different namespaces of one key are independent.
        pub fn in_namespace<N: Serialize + ?Sized>(&self, ns: &N) -> Result<Self> {
            let mut out = self.clone();
            out.base.set_namespace(ns)?;
            Ok(out)
        }

        /// Calls `f` with every key that has a live entry of this state in
        /// this handle's namespace, in the key groups of `range` (Flink's
        /// `applyToAllKeys`; for timers, migrations and clean-up). Each key
        /// is visited once, key group by key group; `f` may read and write
        /// state, but keys it adds to a key group not yet visited are
        /// visited too. Stops at the first error.
        pub fn for_each_key(
            &self,
            range: KeyGroupRange,
            mut f: impl FnMut(K) -> Result<()>,
        ) -> Result<()>
        where
            K: DeserializeOwned + Sized,
        {
            self.base.visit_keys(range, &mut f)
        }

        /// The keys [`for_each_key`](Self::for_each_key) visits, collected
        /// (Flink's `getKeys`).
        pub fn keys(&self, range: KeyGroupRange) -> Result<Vec<K>>
        where
            K: DeserializeOwned + Sized,
        {
            let mut out = Vec::new();
            self.base.visit_keys(range, &mut |k| {
                out.push(k);
                Ok(())
            })?;
            Ok(out)
        }
    };
}

/// One value per key.
pub struct ValueState<K: ?Sized, V> {
    base: Base,
    _t: PhantomData<fn(&K, V)>,
}

impl<K: ?Sized, V> Clone for ValueState<K, V> {
    fn clone(&self) -> Self {
        ValueState {
            base: self.base.clone(),
            _t: PhantomData,
        }
    }
}

impl<K: Serialize + ?Sized, V: Serialize + DeserializeOwned> ValueState<K, V> {
    namespace_method!();

    /// The value of `key`, if set and not expired.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let k = self.base.full_key(key, &[])?;
        match self.base.read(&k)? {
            Some(p) => Ok(Some(decode(&self.base.state, &p)?)),
            None => Ok(None),
        }
    }

    /// Sets the value of `key`.
    pub fn update(&self, key: &K, value: &V) -> Result<()> {
        let k = self.base.full_key(key, &[])?;
        self.base.write(&k, &encode(&self.base.state, value)?)
    }

    /// Removes the value of `key`.
    pub fn clear(&self, key: &K) -> Result<()> {
        let k = self.base.full_key(key, &[])?;
        self.base.ctx.backend.delete(&k)
    }
}

/// A list of elements per key.
pub struct ListState<K: ?Sized, T> {
    base: Base,
    _t: PhantomData<fn(&K, T)>,
}

impl<K: ?Sized, T> Clone for ListState<K, T> {
    fn clone(&self) -> Self {
        ListState {
            base: self.base.clone(),
            _t: PhantomData,
        }
    }
}

impl<K: Serialize + ?Sized, T: Serialize + DeserializeOwned> ListState<K, T> {
    namespace_method!();

    /// The elements of `key`'s list (empty if none).
    ///
    /// With a TTL, each element expires on its own, `ttl` after it was
    /// added (Flink's list state TTL): expired elements are left out and
    /// their space reclaimed; with [`TtlUpdate::OnReadAndWrite`] a read
    /// refreshes the expiry of every element it returns.
    pub fn get(&self, key: &K) -> Result<Vec<T>> {
        let k = self.base.full_key(key, &[])?;
        let Some(stored) = self.base.ctx.backend.get(&k)? else {
            return Ok(Vec::new());
        };
        let env = Envelope::decode(&stored)?;
        if !env.elements {
            // No TTL, or written before elements expired one by one.
            return match self.base.alive(&k, &stored)? {
                Some(payload) => self.items(&payload),
                None => Ok(Vec::new()),
            };
        }
        let now = self.base.ctx.clock.now_ms();
        let mut alive = Vec::new();
        let mut dropped = false;
        for element in env.iter_elements() {
            let (at, bytes) = element?;
            if at <= now {
                dropped = true;
            } else {
                alive.push((at, bytes));
            }
        }
        let out = alive
            .iter()
            .map(|(_, bytes)| decode(&self.base.state, bytes))
            .collect::<Result<Vec<T>>>()?;
        let refresh = self
            .base
            .ttl
            .filter(|t| t.update == TtlUpdate::OnReadAndWrite)
            .map(|t| t.expiry_from(now));
        if let Some(at) = refresh {
            alive.iter_mut().for_each(|e| e.0 = at);
        }
        if alive.is_empty() {
            self.base.ctx.backend.delete(&k)?;
        } else if dropped || refresh.is_some() {
            self.write_elements(&k, &alive)?;
        }
        Ok(out)
    }

    /// Decodes a list payload of concatenated elements (each postcard
    /// encoding is self-delimiting).
    fn items(&self, payload: &[u8]) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut slice: &[u8] = payload;
        while !slice.is_empty() {
            let (item, tail) =
                postcard::take_from_bytes::<T>(slice).map_err(|source| Error::Serialization {
                    context: format!("decode list {}", self.base.state),
                    source: source.into(),
                })?;
            out.push(item);
            slice = tail;
        }
        Ok(out)
    }

    fn write_elements(&self, k: &[u8], elements: &[(u64, &[u8])]) -> Result<()> {
        let mut value = Vec::new();
        Envelope::encode_elements_into(elements.iter().copied(), &mut value)?;
        self.base.ctx.backend.put(k, &value)
    }

    /// Appends one element.
    pub fn add(&self, key: &K, item: &T) -> Result<()> {
        self.add_all(key, std::slice::from_ref(item))
    }

    /// Appends elements. With a TTL, each added element expires `ttl` from
    /// now; the elements already there keep their own expiries.
    pub fn add_all(&self, key: &K, items: &[T]) -> Result<()> {
        let k = self.base.full_key(key, &[])?;
        let Some(ttl) = self.base.ttl else {
            let mut payload = match self.base.ctx.backend.get(&k)? {
                Some(stored) if Envelope::decode(&stored)?.elements => {
                    // The state lost its TTL: keep the live elements,
                    // which now never expire.
                    let mut payload = Vec::new();
                    for item in self.get(key)? {
                        payload.extend_from_slice(&encode(&self.base.state, &item)?);
                    }
                    payload
                }
                Some(stored) => self.base.alive(&k, &stored)?.unwrap_or_default(),
                None => Vec::new(),
            };
            for item in items {
                payload.extend_from_slice(&encode(&self.base.state, item)?);
            }
            return self.base.write(&k, &payload);
        };
        let now = self.base.ctx.clock.now_ms();
        let stored = self.base.ctx.backend.get(&k)?;
        // Elements of an older whole-list value, each with the list's expiry.
        let mut converted = Vec::new();
        let mut elements: Vec<(u64, &[u8])> = Vec::new();
        if let Some(stored) = &stored {
            let env = Envelope::decode(stored)?;
            if env.elements {
                for element in env.iter_elements() {
                    let (at, bytes) = element?;
                    if at > now {
                        elements.push((at, bytes));
                    }
                }
            } else if !env.is_expired(now) {
                let at = env.expires_at_ms.unwrap_or_else(|| ttl.expiry_from(now));
                let mut slice = env.payload;
                while !slice.is_empty() {
                    let (_, tail) = postcard::take_from_bytes::<T>(slice).map_err(|source| {
                        Error::Serialization {
                            context: format!("decode list {}", self.base.state),
                            source: source.into(),
                        }
                    })?;
                    converted.push((at, slice[..slice.len() - tail.len()].to_vec()));
                    slice = tail;
                }
            }
        }
        let added = items
            .iter()
            .map(|item| encode(&self.base.state, item))
            .collect::<Result<Vec<_>>>()?;
        let at = ttl.expiry_from(now);
        elements.extend(converted.iter().map(|(at, b)| (*at, b.as_slice())));
        elements.extend(added.iter().map(|b| (at, b.as_slice())));
        if elements.is_empty() {
            return self.base.ctx.backend.delete(&k);
        }
        self.write_elements(&k, &elements)
    }

    /// Replaces the list. With a TTL, every element expires `ttl` from now.
    pub fn update(&self, key: &K, items: &[T]) -> Result<()> {
        let k = self.base.full_key(key, &[])?;
        if items.is_empty() {
            return self.base.ctx.backend.delete(&k);
        }
        let encoded = items
            .iter()
            .map(|item| encode(&self.base.state, item))
            .collect::<Result<Vec<_>>>()?;
        match self.base.ttl {
            Some(ttl) => {
                let at = ttl.expiry_from(self.base.ctx.clock.now_ms());
                let elements: Vec<(u64, &[u8])> =
                    encoded.iter().map(|b| (at, b.as_slice())).collect();
                self.write_elements(&k, &elements)
            }
            None => self.base.write(&k, &encoded.concat()),
        }
    }

    /// Removes the list.
    pub fn clear(&self, key: &K) -> Result<()> {
        let k = self.base.full_key(key, &[])?;
        self.base.ctx.backend.delete(&k)
    }
}

/// A map from user keys to values per key; each entry is stored (and
/// expires) separately.
pub struct MapState<K: ?Sized, UK, UV> {
    base: Base,
    _t: PhantomData<fn(&K, UK, UV)>,
}

impl<K: ?Sized, UK, UV> Clone for MapState<K, UK, UV> {
    fn clone(&self) -> Self {
        MapState {
            base: self.base.clone(),
            _t: PhantomData,
        }
    }
}

impl<K, UK, UV> MapState<K, UK, UV>
where
    K: Serialize + ?Sized,
    UK: Serialize + DeserializeOwned,
    UV: Serialize + DeserializeOwned,
{
    namespace_method!();

    fn entry_key(&self, key: &K, user_key: &UK) -> Result<Vec<u8>> {
        // The user key is prefixed by a marker byte so that it is never
        // empty (an empty user key would alias the map's base key).
        let mut uk = vec![0u8];
        uk.extend_from_slice(&encode("map key", user_key)?);
        self.base.full_key(key, &uk)
    }

    /// The value under `user_key`.
    pub fn get(&self, key: &K, user_key: &UK) -> Result<Option<UV>> {
        let k = self.entry_key(key, user_key)?;
        match self.base.read(&k)? {
            Some(p) => Ok(Some(decode(&self.base.state, &p)?)),
            None => Ok(None),
        }
    }

    /// True when `user_key` is present.
    pub fn contains(&self, key: &K, user_key: &UK) -> Result<bool> {
        let k = self.entry_key(key, user_key)?;
        Ok(self.base.read(&k)?.is_some())
    }

    /// Sets `user_key` to `value`.
    pub fn put(&self, key: &K, user_key: &UK, value: &UV) -> Result<()> {
        let k = self.entry_key(key, user_key)?;
        self.base.write(&k, &encode(&self.base.state, value)?)
    }

    /// Removes `user_key`.
    pub fn remove(&self, key: &K, user_key: &UK) -> Result<()> {
        let k = self.entry_key(key, user_key)?;
        self.base.ctx.backend.delete(&k)
    }

    /// All live entries of `key`'s map, in encoded-key order.
    pub fn entries(&self, key: &K) -> Result<Vec<(UK, UV)>> {
        let prefix = self.base.full_key(key, &[])?;
        let now = self.base.ctx.clock.now_ms();
        let mut out = Vec::new();
        let mut expired = WriteBatch::new();
        for (k, v) in self.base.ctx.backend.scan_prefix(&prefix)? {
            let Some(uk) = k.get(prefix.len() + 1..) else {
                continue;
            };
            let env = Envelope::decode(&v)?;
            if env.is_expired(now) {
                expired.delete(k.clone());
                continue;
            }
            out.push((
                decode("map key", uk)?,
                decode(&self.base.state, env.payload)?,
            ));
        }
        if !expired.is_empty() {
            self.base.ctx.backend.write_batch(expired)?;
        }
        Ok(out)
    }

    /// True when `key`'s map has no live entry.
    pub fn is_empty(&self, key: &K) -> Result<bool> {
        Ok(self.entries(key)?.is_empty())
    }

    /// Removes every entry of `key`'s map.
    pub fn clear(&self, key: &K) -> Result<()> {
        let prefix = self.base.full_key(key, &[])?;
        let mut batch = WriteBatch::new();
        for (k, _) in self.base.ctx.backend.scan_prefix(&prefix)? {
            batch.delete(k);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.base.ctx.backend.write_batch(batch)
    }
}

/// A single value per key, combined with each added value by a reduce
/// function.
pub struct ReducingState<K: ?Sized, T> {
    base: Base,
    reduce: ReduceFn<T>,
    _t: PhantomData<fn(&K)>,
}

impl<K: ?Sized, T> Clone for ReducingState<K, T> {
    fn clone(&self) -> Self {
        ReducingState {
            base: self.base.clone(),
            reduce: self.reduce.clone(),
            _t: PhantomData,
        }
    }
}

impl<K: Serialize + ?Sized, T: Serialize + DeserializeOwned> ReducingState<K, T> {
    namespace_method!();

    /// The reduced value of `key`.
    pub fn get(&self, key: &K) -> Result<Option<T>> {
        let k = self.base.full_key(key, &[])?;
        match self.base.read(&k)? {
            Some(p) => Ok(Some(decode(&self.base.state, &p)?)),
            None => Ok(None),
        }
    }

    /// Folds `value` into `key`'s value.
    pub fn add(&self, key: &K, value: T) -> Result<()> {
        let k = self.base.full_key(key, &[])?;
        let next = match self.base.read(&k)? {
            Some(p) => (self.reduce)(decode(&self.base.state, &p)?, value),
            None => value,
        };
        self.base.write(&k, &encode(&self.base.state, &next)?)
    }

    /// Removes `key`'s value.
    pub fn clear(&self, key: &K) -> Result<()> {
        let k = self.base.full_key(key, &[])?;
        self.base.ctx.backend.delete(&k)
    }
}

/// An accumulator per key, fed inputs by an [`AggregateFunction`].
pub struct AggregatingState<K: ?Sized, In, F: AggregateFunction<In>> {
    base: Base,
    func: Arc<F>,
    _t: PhantomData<fn(&K, &In)>,
}

impl<K: ?Sized, In, F: AggregateFunction<In>> Clone for AggregatingState<K, In, F> {
    fn clone(&self) -> Self {
        AggregatingState {
            base: self.base.clone(),
            func: self.func.clone(),
            _t: PhantomData,
        }
    }
}

impl<K: Serialize + ?Sized, In, F: AggregateFunction<In>> AggregatingState<K, In, F> {
    namespace_method!();

    fn acc(&self, k: &[u8]) -> Result<Option<F::Acc>> {
        match self.base.read(k)? {
            Some(p) => Ok(Some(decode(&self.base.state, &p)?)),
            None => Ok(None),
        }
    }

    /// Adds one input to `key`'s accumulator.
    pub fn add(&self, key: &K, input: &In) -> Result<()> {
        let k = self.base.full_key(key, &[])?;
        let acc = self
            .acc(&k)?
            .unwrap_or_else(|| self.func.create_accumulator());
        let acc = self.func.add(input, acc);
        self.base.write(&k, &encode(&self.base.state, &acc)?)
    }

    /// The result for `key`, if any input was added.
    pub fn get(&self, key: &K) -> Result<Option<F::Out>> {
        let k = self.base.full_key(key, &[])?;
        Ok(self.acc(&k)?.map(|a| self.func.result(&a)))
    }

    /// Removes `key`'s accumulator.
    pub fn clear(&self, key: &K) -> Result<()> {
        let k = self.base.full_key(key, &[])?;
        self.base.ctx.backend.delete(&k)
    }
}
