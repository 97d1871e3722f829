//! At-rest encryption: authenticated encryption of checkpoint artifacts,
//! manifests, savepoints and write-ahead log frames.
//!
//! Keys come from a [`KeyProvider`]; the [`Keyring`] provider holds them in
//! memory, parsed from a key file or an environment variable. Every
//! encrypted object names the id of the key that sealed it, so keys can
//! rotate: new data is sealed with the provider's
//! [current](KeyProvider::current) key and older data stays readable as long
//! as the provider still holds the key it names.
//!
//! The cipher is XChaCha20-Poly1305 (RustCrypto): a 256-bit key, a 192-bit
//! nonce drawn from the operating system's generator for every object or
//! frame (random nonces of that size never repeat in practice, whatever the
//! volume under one key), a 128-bit tag. The associated data binds each
//! ciphertext to where it belongs (the artifact's content address, the
//! manifest's checkpoint id and the store scope; a log frame's LSN range),
//! so a ciphertext copied or moved to another name fails to open like a
//! tampered one.
//!
//! Object envelope (integers little-endian):
//!
//! ```text
//! magic     4 bytes  "HWEN"
//! version   u8       1
//! cipher    u8       1 = XChaCha20-Poly1305
//! reserved  2 bytes  zero
//! key_id    u32      the key that sealed it
//! nonce     24 bytes
//! sealed    ciphertext of the object, then the 16-byte tag
//! ```
//!
//! The associated data is the first 36 bytes followed by the object's
//! context. A failed tag check, an unknown key id, or an object that is not
//! sealed where encryption is configured is [`Error::Authentication`]
//! ([`ErrorKind::Authentication`](crate::ErrorKind::Authentication)):
//! distinct from corruption, recovery does not fall back to an older
//! checkpoint over it (a tampered store is not a crash to recover from).
//!
//! [`EncryptedStore`] wraps any [`CheckpointStore`]; the write-ahead log
//! seals its frames with [`Cipher::seal_body`]. Content addressing is kept:
//! an artifact's id is the xxh3-128 of its *plaintext*, checked by the
//! wrapper before sealing and by recovery after opening, so identical
//! artifacts keep one name across checkpoints and are stored once. The
//! trade-off is written down in `docs/reliability.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::manifest::{ArtifactId, CheckpointId};
use crate::store::{BoxFuture, CheckpointStore, PutOutcome, StoreCounters};

/// Bytes of a data key.
pub const KEY_LEN: usize = 32;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes of an authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes [`Cipher::seal_body`] adds to a plaintext: nonce and tag.
pub const BODY_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Bytes of the object envelope's header.
pub const ENVELOPE_HEADER_LEN: usize = 36;
/// Bytes [`Cipher::seal`] adds to a plaintext: header and tag.
pub const ENVELOPE_OVERHEAD: usize = ENVELOPE_HEADER_LEN + TAG_LEN;

const MAGIC: &[u8; 4] = b"HWEN";
const VERSION: u8 = 1;
const XCHACHA20_POLY1305: u8 = 1;

/// The id of a key, stored in every object and frame it seals.
pub type KeyId = u32;

/// A 256-bit data key; wiped from memory when dropped, never printed.
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl DataKey {
    /// A key from its bytes.
    pub fn new(bytes: [u8; KEY_LEN]) -> DataKey {
        DataKey(Zeroizing::new(bytes))
    }

    /// A fresh key from the operating system's random generator.
    pub fn generate() -> Result<DataKey> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(k.as_mut())
            .map_err(|e| Error::Internal(format!("cannot draw a random key: {e}")))?;
        Ok(DataKey(k))
    }

    /// The key as 64 lowercase hex digits (the key file's form).
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(2 * KEY_LEN));
        for b in self.0.iter() {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Where keys come from: the key new data is sealed with, and every key
/// older data may name.
///
/// Implement it over a key management service to keep keys out of files;
/// [`Keyring`] is the in-memory implementation. Calls are made for every
/// object and log frame sealed or opened, so they should be cheap (cache
/// what a remote service returns).
pub trait KeyProvider: Send + Sync + fmt::Debug + 'static {
    /// The key to seal new data with, and its id.
    fn current(&self) -> Result<(KeyId, Arc<DataKey>)>;
    /// The key with id `id`, to open data it sealed. A key the provider
    /// does not have is [`Error::Authentication`].
    fn key(&self, id: KeyId) -> Result<Arc<DataKey>>;
}

/// Keys held in memory: a [`KeyProvider`] over a fixed set of keys, the
/// one with the highest id being current.
///
/// Text form (a key file, or an environment variable with the lines
/// separated by newlines or `;`): one key per line, its decimal id, white
/// space, 64 hex digits. Blank lines and lines starting with `#` are
/// ignored. To rotate, add a line with a higher id: new data is sealed with
/// it, data sealed with the older keys stays readable while their lines
/// remain.
///
/// ```text
/// # highwater keys
/// 1 8f1c...64 hex digits...
/// 2 03a9...64 hex digits...
/// ```
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<KeyId, Arc<DataKey>>,
}

impl Keyring {
    /// A keyring of one key.
    pub fn new(id: KeyId, key: DataKey) -> Keyring {
        Keyring {
            keys: BTreeMap::from([(id, Arc::new(key))]),
        }
    }

    /// Adds a key; the highest id is current. Refuses an id already held.
    pub fn with_key(mut self, id: KeyId, key: DataKey) -> Result<Keyring> {
        if self.keys.contains_key(&id) {
            return Err(Error::InvalidArgument(format!(
                "keyring: key id {id} is given twice"
            )));
        }
        self.keys.insert(id, Arc::new(key));
        Ok(self)
    }

    /// Parses the text form; `source` names where it came from in errors
    /// (never the key material itself).
    pub fn parse(text: &str, source: &str) -> Result<Keyring> {
        let mut keys = BTreeMap::new();
        for (n, line) in text.split(['\n', ';']).enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| {
                Error::InvalidArgument(format!("keyring {source}: entry {}: {why}", n + 1))
            };
            let mut parts = line.split_whitespace();
            let (Some(id), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected `<id> <64 hex digits>`"));
            };
            let id: KeyId = id
                .parse()
                .map_err(|_| bad("the id is not a number in 0..=4294967295"))?;
            let key = parse_hex_key(hex).ok_or_else(|| bad("the key is not 64 hex digits"))?;
            if keys.insert(id, Arc::new(key)).is_some() {
                return Err(bad(&format!("key id {id} is given twice")));
            }
        }
        if keys.is_empty() {
            return Err(Error::InvalidArgument(format!("keyring {source}: no keys")));
        }
        Ok(Keyring { keys })
    }

    /// Parses the text form from the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Keyring> {
        let text = std::env::var(var).map_err(|e| {
            Error::InvalidArgument(format!("keyring: environment variable {var}: {e}"))
        })?;
        Keyring::parse(&text, &format!("${var}"))
    }

    /// The id of the current key.
    pub fn current_id(&self) -> KeyId {
        *self.keys.keys().next_back().expect("a keyring holds a key")
    }

    /// The ids held, ascending.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.keys().copied().collect()
    }
}

fn parse_hex_key(hex: &str) -> Option<DataKey> {
    let hex = hex.as_bytes();
    if hex.len() != 2 * KEY_LEN {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        k[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(DataKey(k))
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.ids())
            .field("current", &self.current_id())
            .finish()
    }
}

impl KeyProvider for Keyring {
    fn current(&self) -> Result<(KeyId, Arc<DataKey>)> {
        let (id, key) = self.keys.iter().next_back().expect("a keyring holds a key");
        Ok((*id, key.clone()))
    }

    fn key(&self, id: KeyId) -> Result<Arc<DataKey>> {
        self.keys.get(&id).cloned().ok_or_else(|| Error::Authentication {
            what: format!("key {id}"),
            detail: format!(
                "the keyring does not hold it (it holds {:?}): data sealed with a key that was removed or never given",
                self.ids()
            ),
        })
    }
}

/// Seals and opens bytes with the keys of a [`KeyProvider`].
#[derive(Clone, Debug)]
pub struct Cipher {
    keys: Arc<dyn KeyProvider>,
}

/// Two ciphers are equal when they use the same provider (the same `Arc`).
impl PartialEq for Cipher {
    fn eq(&self, other: &Cipher) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys)
    }
}

impl Eq for Cipher {}

impl Cipher {
    /// A cipher over `keys`.
    pub fn new(keys: Arc<dyn KeyProvider>) -> Cipher {
        Cipher { keys }
    }

    /// True when `bytes` start like an object envelope.
    pub fn is_sealed(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }

    /// Seals `plaintext` into an object envelope bound to `context`.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        // The envelope is a 12-byte prefix and then a sealed body; the
        // body's nonce is part of the header the associated data covers.
        let sealer = self.sealer()?;
        let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD + plaintext.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, XCHACHA20_POLY1305, 0, 0]);
        out.extend_from_slice(&sealer.key_id.to_le_bytes());
        let aad = [&out[..], &sealer.nonce, context].concat();
        sealer.seal_into(&aad, plaintext, &mut out);
        Ok(out)
    }

    /// Opens an object envelope sealed for `context`; `what` names the
    /// object in errors.
    pub fn open(&self, what: &dyn fmt::Display, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let fail = |detail: String| Error::Authentication {
            what: what.to_string(),
            detail,
        };
        if sealed.len() < ENVELOPE_OVERHEAD || !Cipher::is_sealed(sealed) {
            return Err(fail(
                "not encrypted (no envelope) where encryption is configured".into(),
            ));
        }
        let (prefix, body) = sealed.split_at(ENVELOPE_HEADER_LEN - NONCE_LEN);
        if prefix[4] != VERSION || prefix[5] != XCHACHA20_POLY1305 || prefix[6..8] != [0, 0] {
            return Err(fail(format!(
                "unknown envelope version {} or cipher {}",
                prefix[4], prefix[5]
            )));
        }
        let key_id = KeyId::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
        let aad = [&sealed[..ENVELOPE_HEADER_LEN], context].concat();
        let mut out = Vec::new();
        self.open_body(what, key_id, &aad, body, &mut out)?;
        Ok(out)
    }

    /// Low-level sealing for framed formats (the write-ahead log): appends
    /// nonce, ciphertext and tag ([`BODY_OVERHEAD`] bytes more than
    /// `plaintext`) to `out` and returns the id of the key used, which the
    /// caller stores next to the body and passes to [`Cipher::open_body`].
    pub fn seal_body(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<KeyId> {
        let sealer = self.sealer()?;
        let id = sealer.key_id();
        sealer.seal_into(aad, plaintext, out);
        Ok(id)
    }

    /// Everything [`Cipher::seal_body`] can fail on, done ahead: the current
    /// key and a fresh nonce. [`Sealer::seal_into`] then cannot fail, so a
    /// caller can seal under a lock after it learns what to bind.
    pub fn sealer(&self) -> Result<Sealer> {
        let (key_id, key) = self.keys.current()?;
        Ok(Sealer {
            key_id,
            key,
            nonce: random_nonce()?,
        })
    }

    /// Opens what [`Cipher::seal_body`] made with key `key_id` and `aad`,
    /// replacing the contents of `out` with the plaintext.
    pub fn open_body(
        &self,
        what: &dyn fmt::Display,
        key_id: KeyId,
        aad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let fail = |detail: String| Error::Authentication {
            what: what.to_string(),
            detail,
        };
        if sealed.len() < BODY_OVERHEAD {
            return Err(fail(format!(
                "{} bytes are too short to be sealed",
                sealed.len()
            )));
        }
        let key = self.keys.key(key_id).map_err(|e| fail(e.to_string()))?;
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        out.clear();
        out.extend_from_slice(body);
        key.cipher()
            .decrypt_in_place_detached(XNonce::from_slice(nonce), aad, out, Tag::from_slice(tag))
            .map_err(|_| {
                fail(format!(
                    "tag mismatch under key {key_id}: the bytes were changed, moved from another name or position, or sealed with another key of that id"
                ))
            })
    }
}

/// A key and a fresh nonce, ready to seal one body (see [`Cipher::sealer`]).
#[derive(Debug)]
pub struct Sealer {
    key_id: KeyId,
    key: Arc<DataKey>,
    nonce: [u8; NONCE_LEN],
}

impl Sealer {
    /// The id of the key this sealer uses.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Appends nonce, ciphertext and tag of `plaintext` under `aad` to
    /// `out` ([`BODY_OVERHEAD`] bytes more than `plaintext`).
    pub fn seal_into(self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        out.reserve(BODY_OVERHEAD + plaintext.len());
        out.extend_from_slice(&self.nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .cipher()
            .encrypt_in_place_detached(XNonce::from_slice(&self.nonce), aad, &mut out[start..])
            // XChaCha20-Poly1305 fails only above 2^38 bytes of plaintext;
            // callers bound their bodies far below that.
            .expect("a body below 256 GiB seals");
        out.extend_from_slice(&tag);
    }
}

fn random_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce)
        .map_err(|e| Error::Internal(format!("cannot draw a random nonce: {e}")))?;
    Ok(nonce)
}

/// Checks that `data` stored under `id` is either the bytes `id` addresses
/// (their xxh3-128) or an encrypted envelope. Stores call it in
/// `put_artifact`: they cannot check the content address of a sealed
/// artifact (they hold no key); [`EncryptedStore`] checks it before
/// sealing, and the envelope binds the id, so a sealed artifact under
/// another name fails to open.
pub fn check_content_address(id: ArtifactId, data: &[u8]) -> Result<()> {
    if Cipher::is_sealed(data) {
        return Ok(());
    }
    let actual = ArtifactId::of(data);
    if actual != id {
        return Err(Error::InvalidArgument(format!(
            "artifact id is not the xxh3-128 of its bytes: id={id} actual={actual} len={}",
            data.len()
        )));
    }
    Ok(())
}

/// A [`CheckpointStore`] that seals every artifact and manifest it writes
/// and opens every one it reads, over any other store.
///
/// Artifacts keep their plaintext content address as their name (see the
/// module documentation for the trade-off); each envelope's associated data
/// binds the object to its kind, its name and the store scope. Stores the
/// job needs beside the checkpoint store (the ledger of a
/// `LocalCoordinator`, savepoint targets) are sealed when they are opened
/// through this wrapper or one of its [`scoped`](CheckpointStore::scoped)
/// stores.
#[derive(Clone)]
pub struct EncryptedStore {
    inner: Arc<dyn CheckpointStore>,
    cipher: Cipher,
    scope: String,
}

impl fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("inner", &self.inner.name())
            .field("scope", &self.scope)
            .field("keys", &self.cipher.keys)
            .finish()
    }
}

impl EncryptedStore {
    /// Seals what is written to `inner` with the keys of `keys`.
    pub fn new(inner: Arc<dyn CheckpointStore>, keys: Arc<dyn KeyProvider>) -> EncryptedStore {
        EncryptedStore {
            inner,
            cipher: Cipher::new(keys),
            scope: String::new(),
        }
    }

    /// The store underneath, which holds the sealed bytes.
    pub fn inner(&self) -> &Arc<dyn CheckpointStore> {
        &self.inner
    }

    fn context(&self, kind: &str, name: &[u8]) -> Vec<u8> {
        let mut c = Vec::with_capacity(32 + self.scope.len() + name.len());
        c.extend_from_slice(b"highwater ");
        c.extend_from_slice(kind.as_bytes());
        c.push(0);
        c.extend_from_slice(self.scope.as_bytes());
        c.push(0);
        c.extend_from_slice(name);
        c
    }

    fn artifact_context(&self, id: ArtifactId) -> Vec<u8> {
        self.context("artifact", &id.0.to_le_bytes())
    }

    fn manifest_context(&self, id: CheckpointId) -> Vec<u8> {
        self.context("manifest", &id.0.to_le_bytes())
    }
}

impl CheckpointStore for EncryptedStore {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn put_artifact(&self, id: ArtifactId, data: Bytes) -> BoxFuture<'_, Result<PutOutcome>> {
        Box::pin(async move {
            let actual = ArtifactId::of(&data);
            if actual != id {
                return Err(Error::InvalidArgument(format!(
                    "artifact id is not the xxh3-128 of its bytes: id={id} actual={actual} len={}",
                    data.len()
                )));
            }
            let sealed = self.cipher.seal(&self.artifact_context(id), &data)?;
            self.inner.put_artifact(id, Bytes::from(sealed)).await
        })
    }

    fn get_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            let sealed = self.inner.get_artifact(id).await?;
            let what = format!("artifact {id} in store {}", self.inner.name());
            let plain = self
                .cipher
                .open(&what, &self.artifact_context(id), &sealed)?;
            Ok(Bytes::from(plain))
        })
    }

    fn has_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<bool>> {
        self.inner.has_artifact(id)
    }

    fn list_artifacts(&self) -> BoxFuture<'_, Result<Vec<ArtifactId>>> {
        self.inner.list_artifacts()
    }

    fn delete_artifact(&self, id: ArtifactId) -> BoxFuture<'_, Result<()>> {
        self.inner.delete_artifact(id)
    }

    fn commit_manifest(&self, id: CheckpointId, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let sealed = self.cipher.seal(&self.manifest_context(id), &data)?;
            self.inner.commit_manifest(id, Bytes::from(sealed)).await
        })
    }

    fn get_manifest(&self, id: CheckpointId) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            let sealed = self.inner.get_manifest(id).await?;
            let what = format!("manifest {id} in store {}", self.inner.name());
            let plain = self
                .cipher
                .open(&what, &self.manifest_context(id), &sealed)?;
            Ok(Bytes::from(plain))
        })
    }

    fn list_manifests(&self) -> BoxFuture<'_, Result<Vec<CheckpointId>>> {
        self.inner.list_manifests()
    }

    fn delete_manifest(&self, id: CheckpointId) -> BoxFuture<'_, Result<()>> {
        self.inner.delete_manifest(id)
    }

    fn counters(&self) -> StoreCounters {
        self.inner.counters()
    }

    fn scoped(&self, scope: &str) -> Result<Arc<dyn CheckpointStore>> {
        let inner = self.inner.scoped(scope)?;
        let scope = if self.scope.is_empty() {
            scope.to_string()
        } else {
            format!("{}/{scope}", self.scope)
        };
        Ok(Arc::new(EncryptedStore {
            inner,
            cipher: self.cipher.clone(),
            scope,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(1, DataKey::new([7; KEY_LEN]))
    }

    #[test]
    fn seal_open_round_trip_and_every_flip_fails_authentication() {
        let c = Cipher::new(Arc::new(ring()));
        let plain = b"the state of the job".to_vec();
        let sealed = c.seal(b"ctx", &plain).unwrap();
        assert_eq!(sealed.len(), plain.len() + ENVELOPE_OVERHEAD);
        assert!(
            !sealed.windows(5).any(|w| w == b"state"),
            "plaintext visible in the envelope"
        );
        assert_eq!(c.open(&"x", b"ctx", &sealed).unwrap(), plain);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x20;
            let e = c.open(&"x", b"ctx", &bad).unwrap_err();
            assert_eq!(
                e.kind(),
                crate::ErrorKind::Authentication,
                "flip at {i}: {e}"
            );
        }
        for cut in [0, 4, ENVELOPE_HEADER_LEN, sealed.len() - 1] {
            let e = c.open(&"x", b"ctx", &sealed[..cut]).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Authentication, "cut at {cut}");
        }
        let e = c.open(&"x", b"other", &sealed).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Authentication, "{e}");
        let e = c.open(&"x", b"ctx", &plain).unwrap_err();
        assert!(e.to_string().contains("not encrypted"), "{e}");
    }

    #[test]
    fn two_seals_of_the_same_bytes_differ() {
        let c = Cipher::new(Arc::new(ring()));
        assert_ne!(c.seal(b"", b"abc").unwrap(), c.seal(b"", b"abc").unwrap());
    }

    #[test]
    fn rotation_reads_old_keys_and_writes_with_the_newest() {
        let old = Cipher::new(Arc::new(ring()));
        let sealed_old = old.seal(b"c", b"old data").unwrap();
        let rotated = ring().with_key(2, DataKey::new([9; KEY_LEN])).unwrap();
        assert_eq!(rotated.current_id(), 2);
        let new = Cipher::new(Arc::new(rotated));
        assert_eq!(new.open(&"x", b"c", &sealed_old).unwrap(), b"old data");
        let sealed_new = new.seal(b"c", b"new data").unwrap();
        assert_eq!(sealed_new[8..12], 2u32.to_le_bytes());
        let e = old.open(&"x", b"c", &sealed_new).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Authentication);
        assert!(e.to_string().contains("key 2"), "{e}");
    }

    #[test]
    fn bodies_round_trip_and_bind_their_aad() {
        let c = Cipher::new(Arc::new(ring()));
        let mut sealed = Vec::new();
        let id = c.seal_body(b"lsn 5", b"records", &mut sealed).unwrap();
        assert_eq!(sealed.len(), 7 + BODY_OVERHEAD);
        let mut out = Vec::new();
        c.open_body(&"f", id, b"lsn 5", &sealed, &mut out).unwrap();
        assert_eq!(out, b"records");
        for aad in [&b"lsn 6"[..], b""] {
            let e = c.open_body(&"f", id, aad, &sealed, &mut out).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Authentication);
        }
        let e = c
            .open_body(&"f", 9, b"lsn 5", &sealed, &mut out)
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Authentication);
        let e = c
            .open_body(&"f", id, b"lsn 5", &sealed[..10], &mut out)
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Authentication);
    }

    #[test]
    fn keyring_text_form() {
        let k1 = "11".repeat(32);
        let k2 = "2f".repeat(32);
        let r = Keyring::parse(&format!("# keys\n\n1 {k1}\n7 {k2}\n"), "test").unwrap();
        assert_eq!(r.ids(), vec![1, 7]);
        assert_eq!(r.current_id(), 7);
        assert_eq!(*r.key(7).unwrap().to_hex(), k2);
        let r = Keyring::parse(&format!("3 {k1}; 2 {k2}"), "env").unwrap();
        assert_eq!(r.current_id(), 3);
        for bad in [
            String::new(),
            "# only a comment".into(),
            format!("1 {k1}\n1 {k2}"),
            format!("x {k1}"),
            format!("1 {}", &k1[..62]),
            format!("1 {}zz", &k1[..62]),
            format!("1 {k1} extra"),
            "1".into(),
        ] {
            let e = Keyring::parse(&bad, "test").unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Invalid, "{bad:?}");
            assert!(!e.to_string().contains(&k1), "key material in an error");
        }
        assert!(format!("{r:?}").contains("current: 3"));
        assert!(!format!("{r:?}").contains(&k1));
    }
}
