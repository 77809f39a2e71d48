//! The fleet's key material and names: every key derived from the fleet key with BLAKE3
//! `derive_key` under its own context (credential partitions, the fleet id, entry names, the value
//! cipher), the Redis key names built from them, and the value cipher (XChaCha20-Poly1305 with
//! the Redis key and schema version as associated data). Pure: no I/O. It must never put a
//! credential, a reference id or an account id in clear into a Redis key.

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};

use crate::cache::CacheKey;
use crate::credentials::{Partition, PartitionKey};
use crate::routes::{AccountId, Subject};

use super::settings::FleetKey;

/// The `derive_key` contexts. Each key is used for one purpose only, so that knowing one (for
/// example a fleet id, which is visible in Redis) says nothing about another.
const PARTITION_CONTEXT: &str = "zt-risk-sidecar v1 credential partition";
const FLEET_ID_CONTEXT: &str = "zt-risk-sidecar v1 fleet id";
const ENTRY_CONTEXT: &str = "zt-risk-sidecar v1 entry key";
const VALUE_CONTEXT: &str = "zt-risk-sidecar v1 value encryption";

/// The version of what the fleet stores; part of every key name and of the associated data, so
/// that a future layout never decrypts an old one as its own.
pub const SCHEMA: &str = "v1";

/// A sealed value: nonce, then ciphertext with its tag.
const NONCE_BYTES: usize = 24;

/// Everything derived from the fleet key. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct FleetKeys {
    partition: PartitionKey,
    fleet_id: String,
    entry: [u8; 32],
    cipher: XChaCha20Poly1305,
    prefix: String,
}

impl fmt::Debug for FleetKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The fleet id is in every Redis key anyway; the keys themselves never print.
        write!(f, "FleetKeys(fleet {})", self.fleet_id)
    }
}

/// Pure: the hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

impl FleetKeys {
    pub fn derive(key: &FleetKey) -> FleetKeys {
        let material = key.material();
        let partition = PartitionKey::from_bytes(blake3::derive_key(PARTITION_CONTEXT, material));
        let fleet_id = hex(&blake3::derive_key(FLEET_ID_CONTEXT, material)[..8]);
        let entry = blake3::derive_key(ENTRY_CONTEXT, material);
        let cipher = XChaCha20Poly1305::new(&blake3::derive_key(VALUE_CONTEXT, material).into());
        let prefix = format!("ztrs:{SCHEMA}:{fleet_id}:");
        FleetKeys {
            partition,
            fleet_id,
            entry,
            cipher,
            prefix,
        }
    }

    /// The credential partition key: the same on every host of the fleet.
    pub fn partition_key(&self) -> PartitionKey {
        self.partition.clone()
    }

    /// 16 hex characters naming the fleet in every Redis key.
    pub fn fleet_id(&self) -> &str {
        &self.fleet_id
    }

    /// `ztrs:v1:{fleet}:`, the namespace of every key and channel.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A keyed hash of `parts`, each length-prefixed so that no two lists hash alike.
    fn name(&self, kind: &[u8], parts: &[&[u8]]) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.entry);
        hasher.update(kind);
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hex(&hasher.finalize().as_bytes()[..16])
    }

    /// The hash naming a cache key's entry and lease: partition, account and subject, none of
    /// them in clear.
    pub fn entry_hash(&self, key: &CacheKey) -> String {
        let (kind, subject) = subject_parts(&key.subject);
        let partition = key.partition.to_bytes();
        let account = key.account_id.to_string();
        self.name(
            b"entry",
            &[&partition, account.as_bytes(), kind, subject.as_bytes()],
        )
    }

    /// The hash naming one account (its write generation and its index of entries).
    pub fn account_hash(&self, account_id: &AccountId) -> String {
        self.name(b"account", &[account_id.to_string().as_bytes()])
    }

    /// The hash naming one subject of an account in every partition (a reference id or an
    /// integration id), for the indexes that let an invalidation find its entries.
    pub fn subject_hash(&self, account_id: &AccountId, subject: &Subject) -> String {
        let (kind, subject) = subject_parts(subject);
        let account = account_id.to_string();
        self.name(b"subject", &[account.as_bytes(), kind, subject.as_bytes()])
    }

    /// The hash naming one partition's entries of one account (what a 401/403 purges).
    pub fn partition_account_hash(&self, partition: Partition, account_id: &AccountId) -> String {
        let partition = partition.to_bytes();
        let account = account_id.to_string();
        self.name(b"partition", &[&partition, account.as_bytes()])
    }

    /// The hex of a partition, for budget keys (`b:{p}`, `c:{p}`, `q:{p}`): a partition is
    /// already a keyed hash of the credential.
    pub fn partition_hex(&self, partition: Partition) -> String {
        hex(&partition.to_bytes())
    }

    /// `{prefix}{kind}:{hash}`: e.g. `e:` entries, `l:` leases, `g:` account generations.
    pub fn key(&self, kind: &str, hash: &str) -> String {
        format!("{}{kind}:{hash}", self.prefix)
    }

    /// The channel on which "an entry was written or a lease let go" is announced.
    pub fn filled_channel(&self) -> String {
        format!("{}filled", self.prefix)
    }

    /// The channel on which invalidations travel (encrypted: a scope names ids).
    pub fn invalidation_channel(&self) -> String {
        format!("{}inv", self.prefix)
    }

    /// Encrypts `plaintext` for storage under `redis_key`: a random nonce, then the ciphertext
    /// authenticated together with the key and the schema, so that a value copied to another key
    /// (or from another schema) fails to open.
    pub fn seal(&self, redis_key: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_BYTES] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        let aad = associated_data(redis_key);
        let payload = Payload {
            msg: plaintext,
            aad: &aad,
        };
        // Encryption fails only for messages beyond 256 GiB; an entry is at most about 1 MiB.
        let Ok(ciphertext) = self.cipher.encrypt(&nonce, payload) else {
            return Vec::new();
        };
        let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Decrypts a value read from `redis_key`; `None` when it is too short, was sealed under
    /// another key or fleet key, or was tampered with.
    pub fn open(&self, redis_key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_BYTES {
            return None;
        }
        let (nonce_bytes, ciphertext) = sealed.split_at(NONCE_BYTES);
        let nonce_bytes: [u8; NONCE_BYTES] = nonce_bytes.try_into().ok()?;
        let nonce = XNonce::from(nonce_bytes);
        let aad = associated_data(redis_key);
        let payload = Payload {
            msg: ciphertext,
            aad: &aad,
        };
        self.cipher.decrypt(&nonce, payload).ok()
    }
}

/// A subject's kind and text, as hashed into names.
fn subject_parts(subject: &Subject) -> (&'static [u8], String) {
    match subject {
        Subject::Reference(reference_id) => (b"r", reference_id.as_str().to_owned()),
        Subject::Integration(id) => (b"i", id.to_string()),
    }
}

/// The associated data of a value: the schema and the Redis key it lives under.
fn associated_data(redis_key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SCHEMA.len() + 1 + redis_key.len());
    aad.extend_from_slice(SCHEMA.as_bytes());
    aad.push(0);
    aad.extend_from_slice(redis_key.as_bytes());
    aad
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::routes::ReferenceId;

    fn keys(material: &[u8]) -> FleetKeys {
        FleetKeys::derive(&FleetKey::from_bytes(material).expect("long enough"))
    }

    /// A lookup's key under one test credential (the fleet's store tests use it too).
    pub(crate) fn cache_key(partition_key: &PartitionKey, reference: &str) -> CacheKey {
        let headers = [(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer token"),
        )];
        CacheKey {
            partition: partition_key.partition_of_headers(&headers),
            account_id: AccountId::parse("023e105f4ecef8ad9ca31a8372d0c353").expect("valid"),
            subject: Subject::Reference(ReferenceId::from_decoded(reference).expect("valid")),
        }
    }

    #[test]
    fn each_context_gives_a_different_key_and_the_same_fleet_key_the_same_ones() {
        let material = [b'a'; 32];
        let contexts = [
            PARTITION_CONTEXT,
            FLEET_ID_CONTEXT,
            ENTRY_CONTEXT,
            VALUE_CONTEXT,
        ];
        let derived: std::collections::HashSet<[u8; 32]> = contexts
            .iter()
            .map(|context| blake3::derive_key(context, &material))
            .collect();
        assert_eq!(derived.len(), contexts.len());
        let (one, two) = (keys(&material), keys(&material));
        assert_eq!(one.fleet_id(), two.fleet_id());
        assert_eq!(one.fleet_id().len(), 16);
        let key = cache_key(&one.partition_key(), "user-1");
        assert_eq!(key, cache_key(&two.partition_key(), "user-1"));
        assert_eq!(one.entry_hash(&key), two.entry_hash(&key));
        let other = keys(&[b'b'; 32]);
        assert_ne!(one.fleet_id(), other.fleet_id());
        assert_ne!(key, cache_key(&other.partition_key(), "user-1"));
    }

    #[test]
    fn names_hold_no_id_in_clear() {
        let keys = keys(&[b'a'; 32]);
        let key = cache_key(&keys.partition_key(), "user-secret-reference");
        let name = keys.key("e", &keys.entry_hash(&key));
        assert!(name.starts_with("ztrs:v1:"), "{name}");
        assert!(!name.contains("user-secret-reference"));
        assert!(!name.contains("023e105f4ecef8ad9ca31a8372d0c353"));
        assert_ne!(
            keys.entry_hash(&key),
            keys.entry_hash(&cache_key(&keys.partition_key(), "user-other"))
        );
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_key_and_fleet_key() {
        let keys = keys(&[b'a'; 32]);
        let sealed = keys.seal("ztrs:v1:f:e:1", b"the answer");
        assert_eq!(
            keys.open("ztrs:v1:f:e:1", &sealed).as_deref(),
            Some(&b"the answer"[..])
        );
        assert_eq!(keys.open("ztrs:v1:f:e:2", &sealed), None, "moved value");
        let other = super::tests::keys(&[b'b'; 32]);
        assert_eq!(other.open("ztrs:v1:f:e:1", &sealed), None, "other fleet");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(keys.open("ztrs:v1:f:e:1", &tampered), None, "tampered");
        assert_eq!(keys.open("ztrs:v1:f:e:1", b"short"), None, "garbage");
        assert_ne!(sealed, keys.seal("ztrs:v1:f:e:1", b"the answer"), "nonce");
    }
}
