//! Keys and sealing.
//!
//! The master key (an age X25519 identity in a file outside the store) wraps two kinds of
//! key sets with age: the store's own keys (address index, directory, audit) and one key set
//! per account (metadata, content). Records and body chunks are sealed with
//! XChaCha20-Poly1305 under those keys, with the record's table and key as associated data,
//! so a sealed value moved to another key does not open.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

/// The master key: an age identity read from a key file that only its owner may read.
pub struct MasterKey {
    identity: age::x25519::Identity,
    path: PathBuf,
}

impl MasterKey {
    /// Makes a new master key and writes it to `path` (mode 0600). Refuses to overwrite.
    pub fn create_file(path: &Path) -> Result<Self> {
        let identity = age::x25519::Identity::generate();
        let io_error = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_error)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
                .map_err(io_error)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error)?;
        let text = format!(
            "# Sealpost master key. Without it the store cannot be opened; keep a copy offline.\n\
             # public key: {}\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        );
        file.write_all(text.as_bytes()).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        sync_parent(path)?;
        Ok(Self {
            identity,
            path: path.to_path_buf(),
        })
    }

    /// Reads the master key from `path`, refusing a file that group or others can read.
    pub fn load(path: &Path) -> Result<Self> {
        let fail = |reason: String| Error::MasterKeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let metadata = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "mode is {mode:o}, readable by others than its owner; run chmod 600 on it"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        let (Some(line), None) = (lines.next(), lines.next()) else {
            return Err(fail(
                "expected exactly one AGE-SECRET-KEY-1… line".to_string(),
            ));
        };
        let identity = line
            .parse::<age::x25519::Identity>()
            .map_err(|_| fail("not an age X25519 secret key".to_string()))?;
        Ok(Self {
            identity,
            path: path.to_path_buf(),
        })
    }

    /// Makes a key that lives only in memory (tests, benchmarks).
    pub fn ephemeral() -> Self {
        Self {
            identity: age::x25519::Identity::generate(),
            path: PathBuf::from("(memory)"),
        }
    }

    /// The file this key was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The age recipient (public key) of this master key.
    pub fn recipient(&self) -> String {
        self.identity.to_public().to_string()
    }

    pub(crate) fn wrap(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        age::encrypt(&self.identity.to_public(), plaintext)
            .map_err(|e| Error::corrupt(format!("age encryption failed: {e}")))
    }

    /// Returns `None` when the ciphertext was not made for this key.
    pub(crate) fn unwrap(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        age::decrypt(&self.identity, ciphertext).ok()
    }
}

/// Fsyncs the folder holding `path`, so that a new or renamed file survives a crash.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    std::fs::File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })
}

/// 32 bytes of key material, wiped from memory when dropped.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct SecretKey([u8; 32]);

impl SecretKey {
    pub(crate) fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// A key of its own for one purpose, computed from `key`: HMAC-SHA256(key, purpose ‖ 0).
    /// Only who holds `key` (so, for a store key, the master key) can compute it.
    pub(crate) fn derived(key: &SecretKey, purpose: &[u8]) -> Self {
        Self(keyed_hash(key, purpose, &[]))
    }
}

/// The store's own keys, wrapped by the master key in the meta table.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoreKeys {
    /// HMAC key for address look-ups.
    pub(crate) index: SecretKey,
    /// Seals account directory records (address, name, role, password hash).
    pub(crate) directory: SecretKey,
    /// Seals audit records; kept when accounts are shredded, since the log outlives them.
    pub(crate) audit: SecretKey,
    /// The audit log is chained with its MAC key (a store made, or opened once, by a version
    /// that keys it). Kept here, under the master key, because anyone who can write the store
    /// could delete any other mark: an old-style head in such a store is a forgery over a
    /// cut tail, never a store to upgrade.
    pub(crate) audit_keyed: bool,
}

/// The store keys as versions before keyed audit chaining wrote them.
#[derive(Deserialize)]
struct StoreKeysBefore {
    index: SecretKey,
    directory: SecretKey,
    audit: SecretKey,
}

impl StoreKeys {
    pub(crate) fn random() -> Self {
        Self {
            index: SecretKey::random(),
            directory: SecretKey::random(),
            audit: SecretKey::random(),
            audit_keyed: true,
        }
    }
}

/// The store keys in `wrapped`, in either format; `None` when the master key does not open it.
pub(crate) fn unwrap_store_keys(master: &MasterKey, wrapped: &[u8]) -> Result<Option<StoreKeys>> {
    let Some(mut plain) = master.unwrap(wrapped) else {
        return Ok(None);
    };
    let keys = postcard::from_bytes::<StoreKeys>(&plain)
        .or_else(|_| {
            postcard::from_bytes::<StoreKeysBefore>(&plain).map(|before| StoreKeys {
                index: before.index,
                directory: before.directory,
                audit: before.audit,
                audit_keyed: false,
            })
        })
        .map_err(|_| Error::corrupt("wrapped key set"));
    plain.zeroize();
    keys.map(Some)
}

/// One account's keys, wrapped by the master key; deleting them shreds the account.
#[derive(Serialize, Deserialize)]
pub(crate) struct AccountKeys {
    pub(crate) metadata: SecretKey,
    pub(crate) content: SecretKey,
}

impl AccountKeys {
    pub(crate) fn random() -> Self {
        Self {
            metadata: SecretKey::random(),
            content: SecretKey::random(),
        }
    }
}

pub(crate) fn wrap_keys<T: Serialize>(master: &MasterKey, keys: &T) -> Result<Vec<u8>> {
    let mut plain =
        postcard::to_stdvec(keys).map_err(|e| Error::corrupt(format!("encoding keys: {e}")))?;
    let wrapped = master.wrap(&plain);
    plain.zeroize();
    wrapped
}

/// Returns `None` when the master key does not open `wrapped`.
pub(crate) fn unwrap_keys<T: for<'de> Deserialize<'de>>(
    master: &MasterKey,
    wrapped: &[u8],
) -> Result<Option<T>> {
    let Some(mut plain) = master.unwrap(wrapped) else {
        return Ok(None);
    };
    let keys = postcard::from_bytes(&plain).map_err(|_| Error::corrupt("wrapped key set"));
    plain.zeroize();
    keys.map(Some)
}

/// Keyed hash used wherever the store must find a record by something identifying.
pub(crate) fn keyed_hash(key: &SecretKey, domain: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&key.0) else {
        unreachable!("HMAC-SHA256 takes any key length")
    };
    mac.update(domain);
    mac.update(&[0]);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// How values are sealed.
const SEAL_PLAIN: u8 = 0;
const SEAL_XCHACHA: u8 = 1;
const SEAL_AES_GCM_BLOB: u8 = 2;
const NONCE_BYTES: usize = 24;

/// Seals and opens values under one key. Associated data binds each value to its place.
///
/// The format is XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): a random 192-bit nonce, so
/// random nonces never collide however many values a key seals. It is computed as HChaCha20
/// of the key and the nonce's first 16 bytes (a per-value subkey), then ring's
/// ChaCha20-Poly1305 under that subkey with the nonce's last 8 bytes: ring's assembly is
/// several times faster than the portable implementation on the small records FETCH opens by
/// the thousand. A test checks the output against the RustCrypto reference.
#[derive(Clone)]
pub(crate) struct Sealer {
    key: Option<SecretKey>,
}

impl Sealer {
    pub(crate) fn new(key: &SecretKey) -> Self {
        Self {
            key: Some(key.clone()),
        }
    }

    /// A sealer that does not encrypt: only for measuring what encryption costs.
    #[cfg(feature = "bench-unencrypted")]
    pub(crate) fn plaintext() -> Self {
        Self { key: None }
    }

    /// The ChaCha20-Poly1305 key and 96-bit nonce of one XChaCha20 nonce.
    fn subkey(
        key: &SecretKey,
        nonce: &[u8; NONCE_BYTES],
    ) -> (ring::aead::LessSafeKey, ring::aead::Nonce) {
        use chacha20::cipher::consts::U10;
        let (head, tail) = nonce.split_at(16);
        let mut subkey = chacha20::hchacha::<U10>((&key.0).into(), head.into());
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &subkey);
        subkey.as_mut_slice().zeroize();
        let Ok(unbound) = unbound else {
            unreachable!("ChaCha20-Poly1305 takes a 32-byte key")
        };
        let mut short = [0u8; ring::aead::NONCE_LEN];
        short[4..].copy_from_slice(tail);
        (
            ring::aead::LessSafeKey::new(unbound),
            ring::aead::Nonce::assume_unique_for_key(short),
        )
    }

    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let Some(key) = &self.key else {
            let mut out = Vec::with_capacity(1 + plaintext.len());
            out.push(SEAL_PLAIN);
            out.extend_from_slice(plaintext);
            return out;
        };
        let mut nonce = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out =
            Vec::with_capacity(1 + NONCE_BYTES + plaintext.len() + ring::aead::MAX_TAG_LEN);
        out.push(SEAL_XCHACHA);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let (cipher, short) = Self::subkey(key, &nonce);
        let tag = cipher.seal_in_place_separate_tag(
            short,
            ring::aead::Aad::from(aad),
            &mut out[1 + NONCE_BYTES..],
        );
        // Sealing only fails past 256 GiB of plaintext, far over every limit the store
        // enforces before it gets here.
        let Ok(tag) = tag else {
            unreachable!("ChaCha20-Poly1305 input over 256 GiB")
        };
        out.extend_from_slice(tag.as_ref());
        out
    }

    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let tampered = || Error::corrupt("a sealed value does not open (tampered, or moved)");
        match (&self.key, sealed.split_first()) {
            (None, Some((&SEAL_PLAIN, rest))) => Ok(rest.to_vec()),
            (Some(key), Some((&SEAL_XCHACHA, rest)))
                if rest.len() >= NONCE_BYTES + ring::aead::MAX_TAG_LEN =>
            {
                let (nonce, body) = rest.split_at(NONCE_BYTES);
                let Ok(nonce) = <&[u8; NONCE_BYTES]>::try_from(nonce) else {
                    return Err(tampered());
                };
                let (cipher, short) = Self::subkey(key, nonce);
                let mut plain = body.to_vec();
                let opened = cipher
                    .open_in_place(short, ring::aead::Aad::from(aad), &mut plain)
                    .map_err(|_| tampered())?
                    .len();
                plain.truncate(opened);
                Ok(plain)
            }
            _ => Err(tampered()),
        }
    }
}

/// Seals message bodies. Each blob gets its own AES-256-GCM key, derived from the account's
/// content key and the blob's random 128-bit id; chunk `i` of a blob is sealed with nonce `i`.
/// Blobs are never rewritten, so a (key, nonce) pair is never used twice, with no limit on
/// how many chunks an account stores. AES-GCM because it runs on the CPU's AES instructions:
/// bodies are the bulk of the bytes (see ARCHITECTURE.md for the measurement).
#[derive(Clone)]
pub(crate) struct BodySealer {
    content_key: Option<SecretKey>,
}

/// The cipher of one blob.
pub(crate) struct BlobCipher {
    key: Option<ring::aead::LessSafeKey>,
}

impl BodySealer {
    pub(crate) fn new(content_key: &SecretKey) -> Self {
        Self {
            content_key: Some(content_key.clone()),
        }
    }

    #[cfg(feature = "bench-unencrypted")]
    pub(crate) fn plaintext() -> Self {
        Self { content_key: None }
    }

    pub(crate) fn blob(&self, blob_id: &[u8; 16]) -> BlobCipher {
        let Some(content_key) = &self.content_key else {
            return BlobCipher { key: None };
        };
        let mut derived = keyed_hash(content_key, b"blob-key", blob_id);
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &derived)
            .ok()
            .map(ring::aead::LessSafeKey::new);
        derived.zeroize();
        BlobCipher { key }
    }
}

fn chunk_nonce(chunk: u32) -> ring::aead::Nonce {
    let mut nonce = [0u8; ring::aead::NONCE_LEN];
    nonce[ring::aead::NONCE_LEN - 4..].copy_from_slice(&chunk.to_be_bytes());
    ring::aead::Nonce::assume_unique_for_key(nonce)
}

impl BlobCipher {
    /// Seals `plaintext` (consumed, encrypted in place) as chunk `chunk` of the blob.
    pub(crate) fn seal(&self, chunk: u32, aad: &[u8], plaintext: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + 1 + ring::aead::MAX_TAG_LEN);
        let Some(key) = &self.key else {
            out.push(SEAL_PLAIN);
            out.extend_from_slice(&plaintext);
            return out;
        };
        out.push(SEAL_AES_GCM_BLOB);
        out.extend_from_slice(&plaintext);
        let mut body = out.split_off(1);
        // Sealing fails only for inputs over 64 GiB, far beyond every chunk.
        if key
            .seal_in_place_append_tag(chunk_nonce(chunk), ring::aead::Aad::from(aad), &mut body)
            .is_err()
        {
            unreachable!("AES-GCM input over 64 GiB");
        }
        out.extend_from_slice(&body);
        out
    }

    /// Opens chunk `chunk` in place and returns the plaintext within `sealed`.
    pub(crate) fn open<'a>(
        &self,
        chunk: u32,
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a [u8]> {
        let tampered = || Error::corrupt("a body chunk does not open (tampered, or moved)");
        match (&self.key, sealed.split_first_mut()) {
            (None, Some((&mut SEAL_PLAIN, rest))) => Ok(rest),
            (Some(key), Some((&mut SEAL_AES_GCM_BLOB, rest))) => key
                .open_in_place(chunk_nonce(chunk), ring::aead::Aad::from(aad), rest)
                .map(|plain| &*plain)
                .map_err(|_| tampered()),
            _ => Err(tampered()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_value_opens_only_with_its_associated_data() {
        let sealer = Sealer::new(&SecretKey::random());
        let sealed = sealer.seal(b"table/1", b"secret");
        assert_eq!(
            sealer.open(b"table/1", &sealed).ok().as_deref(),
            Some(&b"secret"[..])
        );
        assert!(sealer.open(b"table/2", &sealed).is_err());
        let other = Sealer::new(&SecretKey::random());
        assert!(other.open(b"table/1", &sealed).is_err());
    }

    #[test]
    fn sealed_values_are_xchacha20_poly1305_as_the_reference_computes_it() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let key = SecretKey::random();
        let reference = chacha20poly1305::XChaCha20Poly1305::new((&key.0).into());
        let sealer = Sealer::new(&key);
        for len in [0usize, 1, 63, 64, 65, 300, 4096] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let aad = format!("table/{len}");
            let sealed = sealer.seal(aad.as_bytes(), &plain);
            assert_eq!(sealed[0], SEAL_XCHACHA);
            let (nonce, body) = sealed[1..].split_at(NONCE_BYTES);
            let expected = reference
                .encrypt(
                    nonce.into(),
                    Payload {
                        msg: &plain,
                        aad: aad.as_bytes(),
                    },
                )
                .unwrap();
            assert_eq!(body, &expected[..], "{len} bytes sealed differently");
            // And what the reference sealed opens here.
            let mut theirs = vec![SEAL_XCHACHA];
            theirs.extend_from_slice(nonce);
            theirs.extend_from_slice(&expected);
            assert_eq!(sealer.open(aad.as_bytes(), &theirs).unwrap(), plain);
            let mut altered = sealed.clone();
            *altered.last_mut().unwrap() ^= 1;
            assert!(sealer.open(aad.as_bytes(), &altered).is_err());
            assert!(sealer
                .open(aad.as_bytes(), &sealed[..sealed.len() - 1])
                .is_err());
        }
    }

    #[test]
    fn body_chunks_open_only_in_their_blob_and_position() {
        let sealer = BodySealer::new(&SecretKey::random());
        let blob = sealer.blob(&[1; 16]);
        let mut sealed = blob.seal(3, b"aad", b"chunk text".to_vec());
        assert_eq!(
            blob.open(3, b"aad", &mut sealed.clone()).unwrap(),
            b"chunk text"
        );
        assert!(
            blob.open(4, b"aad", &mut sealed.clone()).is_err(),
            "another position"
        );
        assert!(
            sealer
                .blob(&[2; 16])
                .open(3, b"aad", &mut sealed.clone())
                .is_err(),
            "another blob"
        );
        assert!(
            blob.open(3, b"other", &mut sealed.clone()).is_err(),
            "another place"
        );
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(blob.open(3, b"aad", &mut sealed).is_err(), "altered");
    }

    #[test]
    fn wrapped_keys_open_only_with_their_master_key() {
        let master = MasterKey::ephemeral();
        let wrapped = wrap_keys(&master, &StoreKeys::random()).ok();
        let wrapped = wrapped.as_deref().unwrap_or_default();
        assert!(matches!(
            unwrap_store_keys(&master, wrapped),
            Ok(Some(StoreKeys {
                audit_keyed: true,
                ..
            }))
        ));
        assert!(matches!(
            unwrap_store_keys(&MasterKey::ephemeral(), wrapped),
            Ok(None)
        ));
    }
}
