//! The audit log against someone who can write the store's files: removing the newest
//! records and rewriting the head, without the master key (found by `audit_verify`) and with
//! it (found by the anchors kept outside the store), and a store written before the chain was
//! keyed, which still opens and verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use sealpost_storage::AuditAnchor;
/// What an attacker with the disk (and, for some tests, the master key) does to the files.
mod raw {
    use std::path::Path;
    use std::str::FromStr;

    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    pub(super) fn open(store: &Path) -> rocksdb::DB {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), store).unwrap();
        rocksdb::DB::open_cf(&rocksdb::Options::default(), store, cfs).unwrap()
    }

    pub(super) fn record(db: &rocksdb::DB, seq: u64) -> Option<Vec<u8>> {
        db.get_cf(db.cf_handle("audit").unwrap(), seq.to_be_bytes())
            .unwrap()
    }

    pub(super) fn put_record(db: &rocksdb::DB, seq: u64, value: &[u8]) {
        db.put_cf(db.cf_handle("audit").unwrap(), seq.to_be_bytes(), value)
            .unwrap();
    }

    /// Deletes records `from..=to` and their index postings, as a careful attacker would.
    pub(super) fn delete_records(db: &rocksdb::DB, from: u64, to: u64) {
        let audit = db.cf_handle("audit").unwrap();
        for seq in from..=to {
            db.delete_cf(audit, seq.to_be_bytes()).unwrap();
        }
        let index = db.cf_handle("audit_index").unwrap();
        let doomed: Vec<Box<[u8]>> = db
            .iterator_cf(index, rocksdb::IteratorMode::Start)
            .map(|entry| entry.unwrap().0)
            .filter(|key| {
                let seq = u64::from_be_bytes(key[key.len() - 8..].try_into().unwrap());
                (from..=to).contains(&seq)
            })
            .collect();
        for key in doomed {
            db.delete_cf(index, key).unwrap();
        }
    }

    pub(super) fn head(db: &rocksdb::DB) -> Vec<u8> {
        db.get_cf(db.cf_handle("meta").unwrap(), b"audit_head")
            .unwrap()
            .unwrap()
    }

    pub(super) fn put_head(db: &rocksdb::DB, head: &[u8]) {
        db.put_cf(db.cf_handle("meta").unwrap(), b"audit_head", head)
            .unwrap();
    }

    /// The link the chain had before it was keyed: SHA-256 of public bytes only.
    pub(super) fn sha256_link(prev: &[u8], seq: u64, stored: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"sealpost.audit.v1");
        hasher.update(prev);
        hasher.update(seq.to_be_bytes());
        hasher.update(stored);
        hasher.finalize().into()
    }

    /// A head as the code before keyed chaining wrote and accepted it: seq ‖ SHA-256 link.
    pub(super) fn sha256_head(db: &rocksdb::DB, seq: u64) -> Vec<u8> {
        let stored = record(db, seq).unwrap();
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(&sha256_link(&stored[..32], seq, &stored));
        head
    }

    fn hmac(key: &[u8], domain: &[u8], data: &[&[u8]]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(domain);
        mac.update(&[0]);
        for part in data {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// With the master key: the store's audit key, unwrapped as the store does it.
    pub(super) fn audit_key(db: &rocksdb::DB, master_key_file: &Path) -> [u8; 32] {
        let text = std::fs::read_to_string(master_key_file).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap();
        let identity = age::x25519::Identity::from_str(line).unwrap();
        let wrapped = db
            .get_cf(db.cf_handle("meta").unwrap(), b"store_keys")
            .unwrap()
            .unwrap();
        let keys = age::decrypt(&identity, &wrapped).unwrap();
        // Three 32-byte keys in order: index, directory, audit.
        keys[64..96].try_into().unwrap()
    }

    /// With the master key: the chain's MAC key, derived as ARCHITECTURE.md documents it.
    pub(super) fn mac_key(audit_key: &[u8; 32]) -> [u8; 32] {
        hmac(audit_key, b"sealpost.audit.mac-key", &[])
    }

    pub(super) fn mac_link(mac_key: &[u8; 32], prev: &[u8], seq: u64, stored: &[u8]) -> [u8; 32] {
        hmac(
            mac_key,
            b"sealpost.audit.v2",
            &[prev, &seq.to_be_bytes(), stored],
        )
    }

    /// With the master key: a sealed head, as the store writes it.
    pub(super) fn sealed_head(
        mac_key: &[u8; 32],
        seq: u64,
        link: &[u8; 32],
        keyed_from: u64,
    ) -> Vec<u8> {
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(link);
        head.extend_from_slice(&keyed_from.to_be_bytes());
        let mac = hmac(mac_key, b"sealpost.audit.head", &[&head]);
        head.extend_from_slice(&mac);
        head
    }

    fn aad(prefix: &[u8], seq: u64) -> Vec<u8> {
        let mut aad = prefix.to_vec();
        aad.extend_from_slice(&seq.to_be_bytes());
        aad
    }

    /// With the master key: rewrites the log as the code before keyed chaining wrote it
    /// (records sealed with associated data `audit/` ‖ seq, SHA-256 links, a 40-byte head), to
    /// stand for a store made by an older version. Returns the number of records.
    pub(super) fn rewrite_as_before_keyed_chaining(
        db: &rocksdb::DB,
        master_key_file: &Path,
    ) -> u64 {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let key = audit_key(db, master_key_file);
        let cipher = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&key).unwrap();
        let mut prev = [0u8; 32];
        let mut seq = 1;
        while let Some(stored) = record(db, seq) {
            let sealed = &stored[32..];
            assert_eq!(sealed[0], 1, "an XChaCha20-Poly1305 seal");
            let (nonce, body) = sealed[1..].split_at(24);
            let nonce = chacha20poly1305::XNonce::from_slice(nonce);
            let plain = cipher
                .decrypt(
                    nonce,
                    Payload {
                        msg: body,
                        aad: &aad(b"audit/v2/", seq),
                    },
                )
                .expect("a keyed record opens with its associated data");
            let resealed = cipher
                .encrypt(
                    nonce,
                    Payload {
                        msg: &plain,
                        aad: &aad(b"audit/", seq),
                    },
                )
                .unwrap();
            let mut legacy = prev.to_vec();
            legacy.push(1);
            legacy.extend_from_slice(nonce);
            legacy.extend_from_slice(&resealed);
            put_record(db, seq, &legacy);
            prev = sha256_link(&prev, seq, &legacy);
            seq += 1;
        }
        let mut head = (seq - 1).to_be_bytes().to_vec();
        head.extend_from_slice(&prev);
        put_head(db, &head);
        // The store keys as they were: three keys, without the mark of a keyed log.
        let text = std::fs::read_to_string(master_key_file).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap();
        let identity = age::x25519::Identity::from_str(line).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        let keys =
            age::decrypt(&identity, &db.get_cf(meta, b"store_keys").unwrap().unwrap()).unwrap();
        assert_eq!(keys.len(), 97, "three keys and the keyed mark");
        let before = age::encrypt(&identity.to_public(), &keys[..96]).unwrap();
        db.put_cf(meta, b"store_keys", before).unwrap();
        seq - 1
    }
}

/// A store with `accounts` accounts made, so `accounts + 1` audit records.
fn store_with_records(fx: &Fixture, accounts: usize) {
    let store = fx.create();
    for n in 0..accounts {
        add_account(&store, &format!("staff{n}"));
    }
    let report = store.audit_verify().unwrap();
    assert_eq!(
        (report.records_verified, report.first_break),
        (accounts as u64 + 1, None)
    );
}

#[test]
fn a_removed_tail_with_a_recomputed_sha256_head_is_found_without_the_key() {
    let fx = Fixture::new();
    store_with_records(&fx, 9);
    {
        let db = raw::open(&fx.store_path());
        raw::delete_records(&db, 7, 10);
        let forged = raw::sha256_head(&db, 6);
        raw::put_head(&db, &forged);
    }
    let report = fx.open().audit_verify().unwrap();
    let broken = report.first_break.expect("the truncation is reported");
    assert!(broken.seq <= 7, "{broken:?}");
}

#[test]
fn a_flipped_byte_in_a_middle_record_is_found() {
    let fx = Fixture::new();
    store_with_records(&fx, 6);
    {
        let db = raw::open(&fx.store_path());
        let mut record = raw::record(&db, 4).unwrap();
        let middle = record.len() / 2;
        record[middle] ^= 0x01;
        raw::put_record(&db, 4, &record);
    }
    let report = fx.open().audit_verify().unwrap();
    assert_eq!(report.records_verified, 3);
    assert_eq!(report.first_break.unwrap().seq, 4);
}

#[test]
fn a_forged_head_stays_reported_after_the_server_writes_on() {
    // Without the key the head does not authenticate; the server then goes on from the last
    // record with a link no record has, so new records do not paper over the cut.
    let fx = Fixture::new();
    store_with_records(&fx, 9);
    {
        let db = raw::open(&fx.store_path());
        let seven = raw::record(&db, 7).unwrap();
        raw::delete_records(&db, 7, 10);
        // The genuine link of record 6 (read from record 7 before deleting it), a new head
        // around it with whatever MAC: the attacker cannot compute the right one.
        let mut forged = 6u64.to_be_bytes().to_vec();
        forged.extend_from_slice(&seven[..32]);
        forged.extend_from_slice(&1u64.to_be_bytes());
        forged.extend_from_slice(&[0x5A; 32]);
        raw::put_head(&db, &forged);
    }
    let store = fx.open();
    let report = store.audit_verify().unwrap();
    let broken = report.first_break.expect("reported");
    assert!(
        broken.reason.contains("does not authenticate"),
        "{broken:?}"
    );
    for n in 0..3 {
        add_account(&store, &format!("later{n}"));
    }
    let report = store.audit_verify().unwrap();
    assert_eq!(report.records_verified, 6);
    assert_eq!(report.first_break.expect("still reported").seq, 7);
}

#[test]
fn a_log_removed_whole_is_found_once_the_server_writes_again() {
    let fx = Fixture::new();
    store_with_records(&fx, 4);
    {
        let db = raw::open(&fx.store_path());
        raw::delete_records(&db, 1, 5);
        db.delete_cf(db.cf_handle("meta").unwrap(), b"audit_head")
            .unwrap();
    }
    let store = fx.open();
    add_account(&store, "after");
    let report = store.audit_verify().unwrap();
    let broken = report.first_break.expect("reported");
    assert_eq!(broken.seq, 1);
    assert!(broken.reason.contains("store.create"), "{broken:?}");
}

#[test]
fn with_the_key_a_resealed_shorter_chain_holds_but_its_anchors_do_not() {
    let fx = Fixture::new();
    store_with_records(&fx, 9);
    let store = fx.open();
    let anchor = store.audit_anchor();
    assert_eq!(anchor.seq, 10);
    assert!(store
        .audit_verify_against(&[anchor])
        .unwrap()
        .anchors_failed
        .is_empty());
    drop(store);
    {
        // The attacker has the master key: removes records 7..=10 and seals a head over 6.
        let db = raw::open(&fx.store_path());
        let mac_key = raw::mac_key(&raw::audit_key(&db, &fx.key_path()));
        raw::delete_records(&db, 7, 10);
        let six = raw::record(&db, 6).unwrap();
        let link = raw::mac_link(&mac_key, &six[..32], 6, &six);
        raw::put_head(&db, &raw::sealed_head(&mac_key, 6, &link, 1));
    }
    let store = fx.open();
    let report = store.audit_verify().unwrap();
    assert_eq!(
        (report.records_verified, &report.first_break),
        (6, &None),
        "with the key the chain itself holds"
    );
    let report = store.audit_verify_against(&[anchor]).unwrap();
    assert_eq!(report.anchors_failed.len(), 1);
    assert!(
        report.anchors_failed[0]
            .reason
            .contains("records were removed"),
        "{:?}",
        report.anchors_failed
    );
    // New records over the cut reach the anchor's number again, with another link there.
    for n in 0..6 {
        add_account(&store, &format!("later{n}"));
    }
    let report = store.audit_verify_against(&[anchor]).unwrap();
    assert_eq!((report.records_verified, report.first_break), (12, None));
    assert!(
        report.anchors_failed[0].reason.contains("another link"),
        "{:?}",
        report.anchors_failed
    );
}

#[test]
fn an_old_head_put_back_over_a_cut_tail_is_shown_by_an_anchor() {
    // Without the key: the head as it stood at record 6 (genuine bytes, copied then) is put
    // back after records 7..=10 are removed. The store alone shows a whole, older chain.
    let fx = Fixture::new();
    store_with_records(&fx, 5);
    let old_head = raw::head(&raw::open(&fx.store_path()));
    let store = fx.open();
    for n in 5..9 {
        add_account(&store, &format!("staff{n}"));
    }
    let anchor = store.audit_anchor();
    drop(store);
    {
        let db = raw::open(&fx.store_path());
        raw::delete_records(&db, 7, 10);
        raw::put_head(&db, &old_head);
    }
    let report = fx.open().audit_verify_against(&[anchor]).unwrap();
    assert_eq!((report.records_verified, report.first_break), (6, None));
    assert_eq!(report.anchors_failed.len(), 1, "the anchor shows the cut");
}

#[test]
fn anchors_read_back_from_text_and_hold_while_the_chain_grows() {
    let fx = Fixture::new();
    store_with_records(&fx, 2);
    let store = fx.open();
    let anchor = store.audit_anchor();
    let text = anchor.to_string();
    assert_eq!(AuditAnchor::parse(&text), Some(anchor));
    for bad in ["3", "3:zz", "x:00", &text[..text.len() - 1]] {
        assert_eq!(AuditAnchor::parse(bad), None, "{bad}");
    }
    for n in 0..3 {
        add_account(&store, &format!("more{n}"));
    }
    let report = store.audit_verify_against(&[anchor]).unwrap();
    assert_eq!((report.records_verified, report.first_break), (6, None));
    assert!(report.anchors_failed.is_empty());
    let mut wrong = anchor;
    wrong.link[0] ^= 1;
    let report = store.audit_verify_against(&[wrong]).unwrap();
    assert_eq!(report.anchors_failed.len(), 1);
}

#[test]
fn a_store_from_before_keyed_chaining_opens_verifies_and_goes_on_keyed() {
    let fx = Fixture::new();
    store_with_records(&fx, 4);
    let legacy =
        raw::rewrite_as_before_keyed_chaining(&raw::open(&fx.store_path()), &fx.key_path());
    assert_eq!(legacy, 5);
    let store = fx.open();
    // Opening sealed the old head, with record 6 as the first keyed one.
    let report = store.audit_verify().unwrap();
    assert_eq!(
        (
            report.records_verified,
            &report.first_break,
            report.keyed_from
        ),
        (5, &None, 6)
    );
    assert_eq!(
        store.audit_records(0, &mut |_| Ok(())).ok(),
        Some(()),
        "old records read"
    );
    for n in 0..3 {
        add_account(&store, &format!("keyed{n}"));
    }
    let report = store.audit_verify().unwrap();
    assert_eq!(
        (
            report.records_verified,
            report.first_break,
            report.keyed_from
        ),
        (8, None, 6)
    );
    let anchor = store.audit_anchor();
    drop(store);
    // The keyed part is as safe as in a new store: a cut tail under a forged head is found.
    {
        let db = raw::open(&fx.store_path());
        assert_eq!(raw::head(&db).len(), 80, "a sealed head");
        raw::delete_records(&db, 7, 8);
        let forged = raw::sha256_head(&db, 6);
        raw::put_head(&db, &forged);
    }
    let store = fx.open();
    assert!(store.audit_verify().unwrap().first_break.is_some());
    drop(store);
    // Removing every keyed record and writing an old-style head, without the key, would make
    // the store look as it was before the upgrade; but the store keys (under the master key)
    // say the log is keyed, so the old-style head is reported, not upgraded again. An anchor
    // also shows it.
    {
        let db = raw::open(&fx.store_path());
        raw::delete_records(&db, 6, 8);
        let forged = raw::sha256_head(&db, 5);
        raw::put_head(&db, &forged);
    }
    let store = fx.open();
    let report = store.audit_verify_against(&[anchor]).unwrap();
    let broken = report.first_break.expect("the old-style head is reported");
    assert!(broken.reason.contains("not sealed"), "{broken:?}");
    assert_eq!(report.anchors_failed.len(), 1);
    // And it stays reported after the server writes on.
    add_account(&store, "after");
    assert!(store.audit_verify().unwrap().first_break.is_some());
}

#[test]
fn keyed_records_cannot_pass_for_records_from_before() {
    // A store made with keyed chaining, its links rewritten with SHA-256 and an old-style
    // head: everything the old verification needed, computed without the key.
    let fx = Fixture::new();
    store_with_records(&fx, 5);
    {
        let db = raw::open(&fx.store_path());
        raw::delete_records(&db, 5, 6);
        let mut prev = [0u8; 32];
        for seq in 1..=4 {
            let mut stored = raw::record(&db, seq).unwrap();
            stored[..32].copy_from_slice(&prev);
            raw::put_record(&db, seq, &stored);
            prev = raw::sha256_link(&prev, seq, &stored);
        }
        let mut head = 4u64.to_be_bytes().to_vec();
        head.extend_from_slice(&prev);
        raw::put_head(&db, &head);
    }
    let report = fx.open().audit_verify().unwrap();
    let broken = report.first_break.expect("reported");
    assert_eq!(broken.seq, 1, "{broken:?}");
}
