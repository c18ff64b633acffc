//! The store's promises, each shown against the real RocksDB store on disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use sealpost_storage::{
    AccountStatus, Actor, AuditEvent, AuditSearch, DeliveryTarget, Error, FlagChange, Flags, Held,
    InternalDate, Login, MailboxEvent, MasterKey, NewAccount, NewMessage, Outbound,
    OutboundRecipient, PickupState, Placement, PortalReply, RecipientState, RecipientStatus, Role,
    SpecialUse, Store, SystemFlag, AUDIT_COUNT_EXACT_MAX, PICKUP_TOMBSTONE_MS, SECRET_BYTES_MAX,
};

const MARKER: &str = "zqxmarker7731";

#[test]
fn marker_written_everywhere_is_nowhere_on_disk_but_reads_back() {
    let fx = Fixture::new();
    let store = fx.create();
    let address = format!("{MARKER}@clinic.example");
    let account = store
        .create_account(
            &NewAccount {
                address: &address,
                display_name: &format!("Dr {MARKER}"),
                role: Role::Staff,
                password: Some("pw-12345678"),
            },
            &Actor::cli(),
        )
        .unwrap();
    let folder = format!("Patients/{MARKER}");
    // Enough varied text that the attachment's chunk goes to a RocksDB blob file too.
    let filler: String = (0..60_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    let folder_id = store.create_mailbox(account, &folder, None).unwrap();
    let raw = format!(
        "From: {MARKER} <{address}>\r\nTo: {address}\r\nSubject: results for {MARKER}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
         The body names {MARKER} twice: {MARKER}.\r\n--b1\r\nContent-Type: text/plain; name=\"{MARKER}.txt\"\r\n\
         Content-Disposition: attachment; filename=\"{MARKER}.txt\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         attachment text {filler} {MARKER} {filler}\r\n--b1--\r\n"
    );
    let mut flags = Flags::new();
    flags.add_keyword(MARKER);
    let summary = format!("envelope of {MARKER}");
    let appended = store
        .append(
            account,
            folder_id,
            &NewMessage {
                raw: raw.as_bytes(),
                flags,
                internal_date: InternalDate::now(),
                summary: summary.as_bytes(),
                search_text: b"",
            },
        )
        .unwrap();
    let inbox = mailbox(&store, account, "INBOX");
    append(&store, account, inbox, raw.as_bytes());
    // Compression alone hides a marker (zstd codes literals), so one body must be stored as it
    // is before sealing: random bytes around the marker do not compress.
    let mut scan = incompressible_message(11, 40_000);
    scan.extend_from_slice(MARKER.as_bytes());
    scan.extend_from_slice(&incompressible_message(12, 40_000));
    let scan_uid = append(&store, account, inbox, &scan);
    assert_eq!(store.read_message(account, inbox, scan_uid).unwrap(), scan);

    // Present through the API.
    assert_eq!(
        store
            .read_message(account, folder_id, appended.uid)
            .unwrap(),
        raw.as_bytes()
    );
    assert_eq!(
        store
            .message_summary(account, folder_id, appended.uid)
            .unwrap(),
        summary.as_bytes()
    );
    assert!(store
        .list_mailboxes(account)
        .unwrap()
        .iter()
        .any(|m| m.name == folder));
    assert_eq!(
        store.find_account(&address).unwrap().unwrap().display_name,
        format!("Dr {MARKER}")
    );
    let mut audited = 0;
    store
        .audit_records(0, &mut |r| {
            audited += usize::from(r.event.object.contains(MARKER));
            Ok(())
        })
        .unwrap();
    assert!(audited > 0, "the audit log names the account");

    store.flush().unwrap();
    drop(store);
    let files = files_under(&fx.store_path());
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "sst")),
        "flushed to SST files"
    );
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "blob")),
        "bodies in blob files"
    );
    assert_eq!(
        files_containing(&fx.store_path(), MARKER.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );
    // The check itself works: the same grep finds the marker in a file that has it.
    std::fs::write(fx.dir.path().join("control.txt"), raw.as_bytes()).unwrap();
    assert_eq!(files_containing(fx.dir.path(), MARKER.as_bytes()).len(), 1);
}

fn snapshot(
    dir: &std::path::Path,
) -> BTreeMap<std::path::PathBuf, (Vec<u8>, std::time::SystemTime)> {
    files_under(dir)
        .into_iter()
        .map(|f| {
            let modified = std::fs::metadata(&f).unwrap().modified().unwrap();
            (f.clone(), (std::fs::read(&f).unwrap(), modified))
        })
        .collect()
}

#[test]
fn wrong_or_missing_master_key_is_refused_and_changes_nothing() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice");
    append(
        &store,
        account,
        mailbox(&store, account, "INBOX"),
        b"Subject: x\r\n\r\nbody\r\n",
    );
    drop(store);
    let before = snapshot(&fx.store_path());

    let wrong = fx.dir.path().join("keys/wrong.key");
    MasterKey::create_file(&wrong).unwrap();
    match Store::open(fx.config(), MasterKey::load(&wrong).unwrap()) {
        Err(Error::WrongMasterKey { .. }) => {}
        other => panic!("expected WrongMasterKey, got {:?}", other.err()),
    }
    assert_eq!(
        snapshot(&fx.store_path()),
        before,
        "a refused open touched the store folder"
    );

    let missing = MasterKey::load(&fx.dir.path().join("keys/none.key"));
    assert!(matches!(missing, Err(Error::MasterKeyFile { .. })));
    std::fs::set_permissions(fx.key_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let message = MasterKey::load(&fx.key_path()).err().unwrap().to_string();
    assert!(message.contains("chmod 600"), "{message}");
    std::fs::set_permissions(fx.key_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let store = fx.open();
    assert_eq!(store.list_accounts().unwrap().len(), 1);
}

#[test]
fn store_folder_that_does_not_exist_is_a_clear_error() {
    let fx = Fixture::new();
    let master = MasterKey::create_file(&fx.key_path()).unwrap();
    let message = Store::open(fx.config(), master).err().unwrap().to_string();
    assert!(message.contains("sealpost init"), "{message}");
    assert!(!fx.store_path().exists());
}

#[test]
fn master_key_rotation_keeps_every_message_readable() {
    let fx = Fixture::new();
    let store = fx.create();
    let mut written = Vec::new();
    for (n, name) in ["alice", "bob", "carol"].iter().enumerate() {
        let account = add_account(&store, name);
        let inbox = mailbox(&store, account, "INBOX");
        for i in 0..5u64 {
            let raw = message(n as u64 * 100 + i, 3_000 + (i as usize) * 40_000);
            written.push((account, inbox, append(&store, account, inbox, &raw), raw));
        }
    }
    let new_key = fx.dir.path().join("keys/new.key");
    assert_eq!(
        store
            .rotate_master_key(MasterKey::create_file(&new_key).unwrap(), &Actor::cli())
            .unwrap(),
        3
    );
    // The open handle keeps working across the rotation.
    let (account, inbox, uid, raw) = &written[0];
    assert_eq!(&store.read_message(*account, *inbox, *uid).unwrap(), raw);
    drop(store);

    assert!(matches!(
        Store::open(fx.config(), MasterKey::load(&fx.key_path()).unwrap()),
        Err(Error::WrongMasterKey { .. })
    ));
    let store = Store::open(fx.config(), MasterKey::load(&new_key).unwrap()).unwrap();
    for (account, inbox, uid, raw) in &written {
        assert_eq!(&store.read_message(*account, *inbox, *uid).unwrap(), raw);
    }
    assert_eq!(store.audit_verify().unwrap().first_break, None);
}

#[test]
fn concurrent_appends_get_unique_ascending_uids() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice");
    let inbox = mailbox(&store, account, "INBOX");
    const TASKS: u64 = 8;
    const PER_TASK: u64 = 40;
    let threads: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..PER_TASK)
                    .map(|i| append(&store, account, inbox, &message(task * 1000 + i, 2_000)))
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for thread in threads {
        let uids = thread.join().unwrap();
        assert!(
            uids.windows(2).all(|w| w[0] < w[1]),
            "each task sees its UIDs ascend: {uids:?}"
        );
        for uid in uids {
            assert!(all.insert(uid), "UID {uid} given twice");
        }
    }
    let expected: HashSet<u32> = (1..=(TASKS * PER_TASK) as u32).collect();
    assert_eq!(all, expected);
    let status = store.mailbox(account, inbox).unwrap();
    assert_eq!(
        (status.messages, status.uid_next),
        ((TASKS * PER_TASK) as u32, (TASKS * PER_TASK) as u32 + 1)
    );
    let listed: Vec<u32> = store
        .messages(account, inbox)
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(listed, (1..=(TASKS * PER_TASK) as u32).collect::<Vec<_>>());
}

#[test]
fn copies_share_one_body_and_the_last_expunge_frees_it() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice");
    let inbox = mailbox(&store, account, "INBOX");
    let archive = mailbox(&store, account, "Archive");
    let raw = incompressible_message(7, 4 * 1024 * 1024);
    let uid = append(&store, account, inbox, &raw);
    store.flush().unwrap();
    let before = bytes_under(&fx.store_path());
    let mut copies = Vec::new();
    for name in ["Archive", "Drafts", "Sent"] {
        let target = mailbox(&store, account, name);
        copies.push((
            target,
            store.copy_messages(account, inbox, &[uid], target).unwrap()[0].1,
        ));
    }
    store.flush().unwrap();
    let growth = bytes_under(&fx.store_path()) - before;
    assert!(
        growth < raw.len() as u64 / 10,
        "three copies of 4 MiB grew the store by {growth} bytes"
    );
    assert_eq!(store.body_count(account).unwrap(), 1);
    assert_eq!(store.usage(account).unwrap().bytes, 4 * raw.len() as u64);

    // Each copy is its own message: flags apart, expunge apart.
    let deleted = FlagChange::Add(Flags::new().with(SystemFlag::Deleted));
    store
        .store_flags(account, inbox, &[uid], &deleted, None)
        .unwrap();
    assert_eq!(
        store.expunge_deleted(account, inbox, None).unwrap(),
        vec![uid]
    );
    let (_, archived) = copies[0];
    assert_eq!(store.read_message(account, archive, archived).unwrap(), raw);
    assert_eq!(store.body_count(account).unwrap(), 1);
    for (target, copy) in &copies {
        store
            .store_flags(account, *target, &[*copy], &deleted, None)
            .unwrap();
        store.expunge_deleted(account, *target, None).unwrap();
    }
    assert_eq!(
        store.body_count(account).unwrap(),
        0,
        "the body goes with its last copy"
    );
    assert_eq!(store.usage(account).unwrap().bytes, 0);
}

#[test]
fn move_is_atomic_and_keeps_the_body() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice");
    let inbox = mailbox(&store, account, "INBOX");
    let trash = mailbox(&store, account, "Trash");
    let raws: Vec<Vec<u8>> = (0..3).map(|i| message(i, 5_000)).collect();
    let uids: Vec<u32> = raws
        .iter()
        .map(|r| append(&store, account, inbox, r))
        .collect();
    let pairs = store
        .move_messages(account, inbox, &uids[..2], trash)
        .unwrap();
    assert_eq!(pairs, vec![(uids[0], 1), (uids[1], 2)]);
    assert_eq!(store.mailbox(account, inbox).unwrap().messages, 1);
    assert_eq!(store.read_message(account, trash, 2).unwrap(), raws[1]);
    assert_eq!(
        store.changes_since(account, inbox, 0).unwrap().expunged,
        uids[..2].to_vec()
    );
    assert_eq!(store.body_count(account).unwrap(), 3);
}

#[test]
fn ranged_reads_cross_chunk_boundaries() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice");
    let inbox = mailbox(&store, account, "INBOX");
    let raw = message(3, 3 * sealpost_storage::CHUNK_BYTES + 1234);
    let uid = append(&store, account, inbox, &raw);
    let chunk = sealpost_storage::CHUNK_BYTES as u64;
    let len = raw.len() as u64;
    for (offset, length) in [
        (0, 10),
        (chunk - 5, 10),
        (chunk, chunk),
        (1, 3 * chunk),
        (len - 1, 100),
        (len, 10),
        (len + 5, 1),
        (0, u64::MAX),
    ] {
        let start = offset.min(len) as usize;
        let end = offset.saturating_add(length).min(len) as usize;
        let expected = &raw[start..end.max(start)];
        assert_eq!(
            store
                .read_message_range(account, inbox, uid, offset, length)
                .unwrap(),
            expected,
            "<{offset}.{length}>"
        );
    }
    assert_eq!(store.message(account, inbox, uid).unwrap().size, len);
}

#[test]
fn flags_get_modseqs_and_changes_since_reports_them_with_expunges() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice");
    let inbox = mailbox(&store, account, "INBOX");
    let uids: Vec<u32> = (0..4)
        .map(|i| append(&store, account, inbox, &message(i, 500)))
        .collect();
    let after_appends = store.mailbox(account, inbox).unwrap().highest_modseq;
    assert_eq!(store.mailbox(account, inbox).unwrap().unseen, 4);

    let seen = FlagChange::Add(Flags::new().with(SystemFlag::Seen));
    let stored = store
        .store_flags(account, inbox, &[uids[1], 999], &seen, None)
        .unwrap();
    assert_eq!(
        stored.changed.len(),
        1,
        "UID 999 does not exist and is skipped"
    );
    let seen_modseq = stored.changed[0].modseq;
    assert!(seen_modseq > after_appends);
    assert_eq!(store.mailbox(account, inbox).unwrap().unseen, 3);
    // Setting a flag a message has already changes nothing, not even its MODSEQ.
    let again = store
        .store_flags(account, inbox, &[uids[1]], &seen, None)
        .unwrap();
    assert_eq!((again.changed.len(), again.unchanged.len()), (0, 1));

    // UNCHANGEDSINCE below the message's MODSEQ: refused for that message only.
    let flagged = FlagChange::Add(Flags::new().with(SystemFlag::Flagged));
    let conditional = store
        .store_flags(
            account,
            inbox,
            &[uids[0], uids[1]],
            &flagged,
            Some(after_appends),
        )
        .unwrap();
    assert_eq!(conditional.conflicts, vec![uids[1]]);
    assert_eq!(
        conditional
            .changed
            .iter()
            .map(|m| m.uid)
            .collect::<Vec<_>>(),
        vec![uids[0]]
    );

    let mut keywords = Flags::new().with(SystemFlag::Deleted);
    keywords.add_keyword("$Label1");
    store
        .store_flags(
            account,
            inbox,
            &[uids[2]],
            &FlagChange::Replace(keywords.clone()),
            None,
        )
        .unwrap();
    assert_eq!(
        store.message(account, inbox, uids[2]).unwrap().flags,
        keywords
    );
    assert_eq!(
        store.expunge_deleted(account, inbox, None).unwrap(),
        vec![uids[2]]
    );

    let changes = store.changes_since(account, inbox, after_appends).unwrap();
    let changed: Vec<u32> = changes.changed.iter().map(|(uid, _)| *uid).collect();
    assert_eq!(changed, vec![uids[0], uids[1]]);
    assert_eq!(changes.expunged, vec![uids[2]]);
    assert_eq!(
        store
            .changes_since(account, inbox, 0)
            .unwrap()
            .changed
            .len(),
        3
    );
    let highest = store.mailbox(account, inbox).unwrap().highest_modseq;
    assert_eq!(
        store.changes_since(account, inbox, highest).unwrap(),
        Default::default()
    );

    let remove = FlagChange::Remove(Flags::new().with(SystemFlag::Seen));
    store
        .store_flags(account, inbox, &[uids[1]], &remove, None)
        .unwrap();
    assert_eq!(store.mailbox(account, inbox).unwrap().unseen, 3);
}

#[test]
fn new_accounts_get_the_default_mailboxes_and_backup_is_read_only() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice");
    let list = store.list_mailboxes(account).unwrap();
    let names: Vec<(&str, Option<SpecialUse>)> = list
        .iter()
        .map(|m| (m.name.as_str(), m.special_use))
        .collect();
    assert_eq!(
        names,
        vec![
            ("Archive", Some(SpecialUse::Archive)),
            ("BACKUP", Some(SpecialUse::Backup)),
            ("Drafts", Some(SpecialUse::Drafts)),
            ("INBOX", None),
            ("Junk", Some(SpecialUse::Junk)),
            ("Sent", Some(SpecialUse::Sent)),
            ("Trash", Some(SpecialUse::Trash)),
        ]
    );
    assert!(list.iter().all(|m| m.subscribed && m.uid_next == 1));
    let validities: HashSet<u32> = list.iter().map(|m| m.uid_validity).collect();
    assert_eq!(
        validities.len(),
        list.len(),
        "UIDVALIDITY differs per mailbox"
    );

    let inbox = mailbox(&store, account, "inbox");
    let backup = mailbox(&store, account, "BACKUP");
    let raw = message(1, 800);
    let new = NewMessage {
        raw: &raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: b"",
    };
    let target = DeliveryTarget {
        account,
        placement: Placement::Inbox,
        outbound: None,
    };
    let (delivered, _) = store
        .deliver_all(&[target], &new, &|_| Vec::new())
        .unwrap()
        .remove(0);
    assert_eq!(delivered[0].mailbox, inbox, "INBOX first, then BACKUP");
    assert_eq!(
        store.body_count(account).unwrap(),
        1,
        "INBOX and BACKUP copies share a body"
    );
    let backup_uid = delivered[1].uid;

    assert!(matches!(
        store.append(account, backup, &new),
        Err(Error::ReadOnly { .. })
    ));
    let seen = FlagChange::Add(Flags::new().with(SystemFlag::Seen));
    assert!(matches!(
        store.store_flags(account, backup, &[backup_uid], &seen, None),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        store.expunge_deleted(account, backup, None),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        store.move_messages(account, backup, &[backup_uid], inbox),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        store.delete_mailbox(account, "BACKUP"),
        Err(Error::MailboxProtected { .. })
    ));
    assert!(matches!(
        store.rename_mailbox(account, "BACKUP", "Old"),
        Err(Error::MailboxProtected { .. })
    ));
    assert!(matches!(
        store.delete_mailbox(account, "INBOX"),
        Err(Error::MailboxProtected { .. })
    ));
    // Copying out of BACKUP works.
    let copied = store
        .copy_messages(account, backup, &[backup_uid], inbox)
        .unwrap();
    assert_eq!(
        store.read_message(account, inbox, copied[0].1).unwrap(),
        raw
    );
    assert_eq!(store.mailbox(account, backup).unwrap().messages, 1);
}

#[test]
fn mailboxes_create_parents_rename_with_children_and_delete() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice");
    store
        .create_mailbox(account, "Projects/2026/Q1", None)
        .unwrap();
    let names = |store: &Store| {
        store
            .list_mailboxes(account)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
    };
    assert!(names(&store).contains(&"Projects".to_string()));
    assert!(names(&store).contains(&"Projects/2026".to_string()));
    assert!(matches!(
        store.create_mailbox(account, "Projects/2026", None),
        Err(Error::MailboxExists)
    ));
    assert!(matches!(
        store.create_mailbox(account, "inbox", None),
        Err(Error::MailboxExists)
    ));

    let q1 = mailbox(&store, account, "Projects/2026/Q1");
    let raw = message(9, 1000);
    let uid = append(&store, account, q1, &raw);
    store
        .rename_mailbox(account, "Projects", "Work/Old")
        .unwrap();
    let after = names(&store);
    for expected in ["Work", "Work/Old", "Work/Old/2026", "Work/Old/2026/Q1"] {
        assert!(
            after.contains(&expected.to_string()),
            "{expected} in {after:?}"
        );
    }
    assert!(!after.iter().any(|n| n.starts_with("Projects")));
    let renamed = store
        .mailbox_by_name(account, "Work/Old/2026/Q1")
        .unwrap()
        .unwrap();
    assert_eq!(
        renamed.id, q1,
        "rename keeps the mailbox and its UIDVALIDITY"
    );
    assert_eq!(store.read_message(account, q1, uid).unwrap(), raw);
    assert!(matches!(
        store.rename_mailbox(account, "Work", "Work/Inside"),
        Err(Error::InvalidMailboxName { .. })
    ));
    assert!(matches!(
        store.rename_mailbox(account, "Nope", "Other"),
        Err(Error::MailboxNotFound)
    ));

    // Delete and re-create under the same name: a new UIDVALIDITY.
    let validity = store.mailbox(account, q1).unwrap().uid_validity;
    store.delete_mailbox(account, "Work/Old/2026/Q1").unwrap();
    assert_eq!(store.body_count(account).unwrap(), 0);
    let again = store
        .create_mailbox(account, "Work/Old/2026/Q1", None)
        .unwrap();
    assert_ne!(again, q1);
    assert_ne!(
        store.mailbox(account, again).unwrap().uid_validity,
        validity
    );

    // Renaming INBOX moves its messages and leaves it empty.
    let inbox = mailbox(&store, account, "INBOX");
    append(&store, account, inbox, &raw);
    store.rename_mailbox(account, "INBOX", "Old Inbox").unwrap();
    assert_eq!(store.mailbox(account, inbox).unwrap().messages, 0);
    let old = mailbox(&store, account, "Old Inbox");
    assert_eq!(store.read_message(account, old, 1).unwrap(), raw);

    store.set_subscribed(account, "Work", false).unwrap();
    assert!(
        !store
            .mailbox_by_name(account, "Work")
            .unwrap()
            .unwrap()
            .subscribed
    );
    for bad in ["", "/a", "a/", "a//b", "a\u{7}b", "a*b"] {
        assert!(store.create_mailbox(account, bad, None).is_err(), "{bad:?}");
    }
}

#[test]
fn recent_is_claimed_once_and_subscriptions_outlive_their_mailbox() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice@clinic.example");
    let inbox = mailbox(&store, account, "INBOX");
    let raw = b"Subject: r\r\n\r\nbody\r\n".to_vec();
    append(&store, account, inbox, &raw);
    append(&store, account, inbox, &raw);
    // Looking without claiming (EXAMINE) changes nothing; the first claim takes both; a
    // second claim finds nothing left, until more mail arrives.
    assert_eq!(store.recent_count(account, inbox).unwrap(), 2);
    assert_eq!(store.claim_recent(account, inbox, false).unwrap(), 1..3);
    assert_eq!(store.claim_recent(account, inbox, true).unwrap(), 1..3);
    assert_eq!(store.recent_count(account, inbox).unwrap(), 0);
    assert!(store.claim_recent(account, inbox, true).unwrap().is_empty());
    append(&store, account, inbox, &raw);
    assert_eq!(store.recent_count(account, inbox).unwrap(), 1);
    assert_eq!(store.claim_recent(account, inbox, true).unwrap(), 3..4);

    // A subscribed mailbox deleted stays subscribed (RFC 3501 6.3.6), is subscribed again
    // when re-created, and can be unsubscribed while it does not exist.
    store.create_mailbox(account, "Lab", None).unwrap();
    store.set_subscribed(account, "Lab", true).unwrap();
    store.delete_mailbox(account, "Lab").unwrap();
    assert_eq!(
        store.lost_subscriptions(account).unwrap(),
        vec!["Lab".to_string()]
    );
    store.create_mailbox(account, "Lab", None).unwrap();
    assert!(
        store
            .mailbox_by_name(account, "Lab")
            .unwrap()
            .unwrap()
            .subscribed
    );
    assert!(store.lost_subscriptions(account).unwrap().is_empty());
    // A mailbox renamed to such a name takes its subscription, as a new one would.
    store.delete_mailbox(account, "Lab").unwrap();
    store.create_mailbox(account, "Other", None).unwrap();
    store.rename_mailbox(account, "Other", "Lab").unwrap();
    assert!(
        store
            .mailbox_by_name(account, "Lab")
            .unwrap()
            .unwrap()
            .subscribed
    );
    assert!(store.lost_subscriptions(account).unwrap().is_empty());
    store.delete_mailbox(account, "Lab").unwrap();
    store.set_subscribed(account, "Lab", false).unwrap();
    assert!(store.lost_subscriptions(account).unwrap().is_empty());
    assert!(matches!(
        store.set_subscribed(account, "Lab", true),
        Err(Error::MailboxNotFound)
    ));
    assert!(matches!(
        store.set_subscribed(account, "Never", false),
        Err(Error::MailboxNotFound)
    ));
    // At most LOST_SUBSCRIPTIONS_MAX names are kept: the oldest goes first.
    for n in 0..=sealpost_storage::LOST_SUBSCRIPTIONS_MAX {
        let name = format!("Gone{n}");
        store.create_mailbox(account, &name, None).unwrap();
        store.set_subscribed(account, &name, true).unwrap();
        store.delete_mailbox(account, &name).unwrap();
    }
    let lost = store.lost_subscriptions(account).unwrap();
    assert_eq!(lost.len(), sealpost_storage::LOST_SUBSCRIPTIONS_MAX);
    assert_eq!(lost[0], "Gone1");
}

/// A RENAME while mail is appended and \Recent claimed keeps every counter: it wrote back the
/// records it had read before taking the mailboxes' locks, so UIDNEXT could go back and a
/// UID be given twice.
#[test]
fn a_rename_racing_appends_gives_no_uid_twice() {
    let fx = Fixture::new();
    let store = Arc::new(fx.create());
    let account = add_account(&store, "alice@clinic.example");
    let id = store.create_mailbox(account, "Box", None).unwrap();
    let appender = {
        let store = store.clone();
        std::thread::spawn(move || {
            let raw = b"Subject: r\r\n\r\nbody\r\n".to_vec();
            (0..200)
                .map(|_| {
                    store.claim_recent(account, id, true).unwrap();
                    append(&store, account, id, &raw)
                })
                .collect::<Vec<u32>>()
        })
    };
    for round in 0..100 {
        let (from, to) = if round % 2 == 0 {
            ("Box", "Moved")
        } else {
            ("Moved", "Box")
        };
        store.rename_mailbox(account, from, to).unwrap();
    }
    let uids = appender.join().unwrap();
    let distinct: HashSet<u32> = uids.iter().copied().collect();
    assert_eq!(distinct.len(), uids.len(), "a UID was given twice");
    let mailbox = store.mailbox(account, id).unwrap();
    assert_eq!((mailbox.messages, mailbox.uid_next), (200, 201));
    assert_eq!(store.messages(account, id).unwrap().len(), 200);
}

#[test]
fn accounts_log_in_by_address_or_local_part_and_can_be_disabled() {
    let fx = Fixture::new();
    let store = fx.create();
    let id = add_account(&store, "Alice@Clinic.Example");
    assert_eq!(store.account(id).unwrap().address, "alice@clinic.example");
    assert!(matches!(
        store.create_account(
            &NewAccount {
                address: "alice",
                display_name: "",
                role: Role::Admin,
                password: None
            },
            &Actor::cli()
        ),
        Err(Error::AddressTaken)
    ));
    assert!(
        matches!(store.check_password("alice", "correct horse battery").unwrap(), Login::Accepted(a) if a.id == id)
    );
    assert!(matches!(
        store
            .check_password("ALICE@clinic.example", "correct horse battery")
            .unwrap(),
        Login::Accepted(_)
    ));
    assert_eq!(
        store.check_password("alice", "wrong").unwrap(),
        Login::Rejected
    );
    assert_eq!(
        store
            .check_password("nobody", "correct horse battery")
            .unwrap(),
        Login::Rejected
    );
    assert_eq!(
        store
            .check_password("alice@other.example", "correct horse battery")
            .unwrap(),
        Login::Rejected
    );

    store
        .set_account_status(id, AccountStatus::Disabled, &Actor::cli())
        .unwrap();
    assert!(matches!(
        store
            .check_password("alice", "correct horse battery")
            .unwrap(),
        Login::Disabled(_)
    ));
    store
        .set_account_status(id, AccountStatus::Active, &Actor::cli())
        .unwrap();
    store
        .set_password(id, "a new passphrase", &Actor::cli())
        .unwrap();
    assert_eq!(
        store
            .check_password("alice", "correct horse battery")
            .unwrap(),
        Login::Rejected
    );
    assert!(matches!(
        store.check_password("alice", "a new passphrase").unwrap(),
        Login::Accepted(_)
    ));

    let bob = add_account(&store, "bob");
    let list: Vec<String> = store
        .list_accounts()
        .unwrap()
        .into_iter()
        .map(|a| a.address)
        .collect();
    assert_eq!(list, vec!["alice@clinic.example", "bob@clinic.example"]);
    let mut actions = Vec::new();
    store
        .audit_records(0, &mut |r| {
            actions.push(r.event.action);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        actions,
        [
            "store.create",
            "account.create",
            "account.disable",
            "account.enable",
            "account.password",
            "account.create"
        ]
    );
    let _ = bob;
}

#[test]
fn deleting_an_account_shreds_its_keys_from_every_file() {
    let fx = Fixture::new();
    let store = fx.create();
    let alice = add_account(&store, "alice");
    let bob = add_account(&store, "bob");
    let inbox = mailbox(&store, alice, "INBOX");
    let raw = message(5, 20_000);
    append(&store, alice, inbox, &raw);
    store.flush().unwrap();
    drop(store);

    // Read alice's wrapped key set straight from RocksDB, as an attacker with the disk would.
    let wrapped = {
        let db = rocksdb::DB::open_cf_for_read_only(
            &rocksdb::Options::default(),
            fx.store_path(),
            ["account_keys"],
            false,
        )
        .unwrap();
        let cf = db.cf_handle("account_keys").unwrap();
        db.get_cf(cf, alice.0.to_be_bytes())
            .unwrap()
            .expect("alice's keys are on disk")
    };
    assert!(wrapped.len() > 100);
    assert!(
        !files_containing(&fx.store_path(), &wrapped).is_empty(),
        "the probe finds the key before deletion"
    );

    let store = fx.open();
    store.delete_account(alice, &Actor::cli()).unwrap();
    assert!(store.find_account("alice").unwrap().is_none());
    assert!(matches!(
        store.read_message(alice, inbox, 1),
        Err(Error::AccountNotFound { .. })
    ));
    assert!(store.find_account("bob").unwrap().is_some());
    assert_eq!(store.list_mailboxes(bob).unwrap().len(), 7);
    drop(store);
    assert_eq!(
        files_containing(&fx.store_path(), &wrapped),
        Vec::<std::path::PathBuf>::new(),
        "wrapped key still on disk"
    );
    let store = fx.open();
    assert!(store.find_account("alice").unwrap().is_none());
    assert_eq!(store.audit_verify().unwrap().first_break, None);
}

#[test]
fn audit_verify_finds_an_altered_and_a_removed_record() {
    let fx = Fixture::new();
    let store = fx.create();
    for name in ["a1", "a2", "a3", "a4"] {
        add_account(&store, name);
    }
    let report = store.audit_verify().unwrap();
    assert_eq!((report.records_verified, report.first_break), (5, None));
    drop(store);

    let edit = |f: &dyn Fn(&rocksdb::DB, &rocksdb::ColumnFamily)| {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), fx.store_path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), fx.store_path(), cfs).unwrap();
        f(&db, db.cf_handle("audit").unwrap());
    };
    // Flip one byte inside record 3's sealed body.
    edit(&|db, cf| {
        let mut value = db.get_cf(cf, 3u64.to_be_bytes()).unwrap().unwrap();
        let last = value.len() - 1;
        value[last] ^= 1;
        db.put_cf(cf, 3u64.to_be_bytes(), value).unwrap();
    });
    let broken = fx.open().audit_verify().unwrap();
    assert_eq!(broken.records_verified, 2);
    assert_eq!(broken.first_break.unwrap().seq, 3);

    let fx2 = Fixture::new();
    let store = fx2.create();
    for name in ["a1", "a2", "a3", "a4"] {
        add_account(&store, name);
    }
    drop(store);
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), fx2.store_path()).unwrap();
    {
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), fx2.store_path(), cfs).unwrap();
        db.delete_cf(db.cf_handle("audit").unwrap(), 2u64.to_be_bytes())
            .unwrap();
    }
    let removed = fx2.open().audit_verify().unwrap().first_break.unwrap();
    assert_eq!(removed.seq, 2, "{}", removed.reason);
}

#[test]
fn audit_verify_finds_a_removed_tail() {
    let fx = Fixture::new();
    let store = fx.create();
    add_account(&store, "a1");
    add_account(&store, "a2");
    drop(store);
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), fx.store_path()).unwrap();
    {
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), fx.store_path(), cfs).unwrap();
        db.delete_cf(db.cf_handle("audit").unwrap(), 3u64.to_be_bytes())
            .unwrap();
    }
    let report = fx.open().audit_verify().unwrap();
    assert_eq!(report.records_verified, 2);
    assert_eq!(report.first_break.unwrap().seq, 3);
}

#[test]
fn subscribers_hear_appends_flag_changes_and_expunges() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice");
    let inbox = mailbox(&store, account, "INBOX");
    let mut events = store.subscribe(account, inbox);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || append(&store, account, inbox, &message(1, 300)))
    };
    let uid = writer.join().unwrap();
    assert!(
        matches!(events.blocking_recv().unwrap(), MailboxEvent::Appended { uid: u, .. } if u == uid)
    );
    let deleted = FlagChange::Add(Flags::new().with(SystemFlag::Deleted));
    store
        .store_flags(account, inbox, &[uid], &deleted, None)
        .unwrap();
    assert!(
        matches!(events.blocking_recv().unwrap(), MailboxEvent::FlagsChanged { uid: u, .. } if u == uid)
    );
    store.expunge_deleted(account, inbox, None).unwrap();
    assert!(
        matches!(events.blocking_recv().unwrap(), MailboxEvent::Expunged { uid: u, .. } if u == uid)
    );
    // Another mailbox's events do not arrive here.
    append(
        &store,
        account,
        mailbox(&store, account, "Sent"),
        &message(2, 300),
    );
    assert!(events.try_recv().is_err());
}

#[test]
fn every_limit_refuses_and_changes_nothing() {
    let fx = Fixture::new();
    let mut config = fx.config();
    config.limits.message_bytes_max = 10_000;
    config.limits.mailboxes_per_account_max = 9;
    config.limits.mailbox_name_bytes_max = 20;
    config.limits.mailbox_depth_max = 3;
    config.limits.keywords_per_message_max = 2;
    config.limits.display_name_bytes_max = 10;
    let store = Store::create(config, MasterKey::create_file(&fx.key_path()).unwrap()).unwrap();
    let account = add_account(&store, "alice");
    let inbox = mailbox(&store, account, "INBOX");

    let too_big = message(1, 10_001);
    let new = NewMessage {
        raw: &too_big,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: b"",
    };
    assert!(matches!(
        store.append(account, inbox, &new),
        Err(Error::LimitExceeded {
            what: "message bytes",
            ..
        })
    ));
    assert_eq!(
        store.mailbox(account, inbox).unwrap().uid_next,
        1,
        "a refused append uses no UID"
    );
    assert_eq!(store.body_count(account).unwrap(), 0);

    assert!(matches!(
        store.create_mailbox(account, &"x".repeat(21), None),
        Err(Error::LimitExceeded {
            what: "mailbox name bytes",
            ..
        })
    ));
    assert!(matches!(
        store.create_mailbox(account, "a/b/c/d", None),
        Err(Error::LimitExceeded {
            what: "mailbox name levels",
            ..
        })
    ));
    store.create_mailbox(account, "one", None).unwrap();
    store.create_mailbox(account, "two", None).unwrap();
    assert!(matches!(
        store.create_mailbox(account, "three", None),
        Err(Error::LimitExceeded {
            what: "mailboxes per account",
            ..
        })
    ));
    assert_eq!(store.list_mailboxes(account).unwrap().len(), 9);

    let mut flags = Flags::new();
    for k in ["a", "b", "c"] {
        flags.add_keyword(k);
    }
    let small = message(2, 100);
    let new = NewMessage {
        raw: &small,
        flags: flags.clone(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: b"",
    };
    assert!(matches!(
        store.append(account, inbox, &new),
        Err(Error::LimitExceeded {
            what: "keywords per message",
            ..
        })
    ));
    let uid = append(&store, account, inbox, &small);
    assert!(store
        .store_flags(account, inbox, &[uid], &FlagChange::Add(flags), None)
        .is_err());
    assert!(store.message(account, inbox, uid).unwrap().flags.is_empty());
    let mut bad = Flags::new();
    bad.add_keyword("has space");
    assert!(matches!(
        store.store_flags(account, inbox, &[uid], &FlagChange::Add(bad), None),
        Err(Error::InvalidInput { .. })
    ));

    let long_name = NewAccount {
        address: "bob",
        display_name: "A very long name",
        role: Role::Staff,
        password: None,
    };
    assert!(matches!(
        store.create_account(&long_name, &Actor::cli()),
        Err(Error::LimitExceeded {
            what: "display name bytes",
            ..
        })
    ));
    assert!(store.find_account("bob").unwrap().is_none());
}

#[test]
fn a_second_process_cannot_open_a_store_in_use() {
    let fx = Fixture::new();
    let _store = fx.create();
    // RocksDB's lock is per process, so this checks the error's wording from the same process.
    let second = Store::open(fx.config(), MasterKey::load(&fx.key_path()).unwrap());
    let message = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("in use") || message.contains("lock"),
        "{message}"
    );
}

#[test]
fn store_handles_are_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<Arc<Store>>();
}

#[test]
fn search_text_is_stored_sealed_beside_the_body_and_shared_by_copies() {
    let fx = Fixture::new();
    let store = fx.create();
    let account = add_account(&store, "alice");
    let inbox = mailbox(&store, account, "INBOX");
    let archive = mailbox(&store, account, "Archive");
    // Random bytes around the marker do not compress: unsealed, the grep would find it.
    let mut text = incompressible_message(21, 20_000);
    text.extend_from_slice(MARKER.as_bytes());
    let raw = message(4, 3_000);
    let new = NewMessage {
        raw: &raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: &text,
    };
    let uid = store.append(account, inbox, &new).unwrap().uid;
    assert_eq!(
        store.message_search_text(account, inbox, uid).unwrap(),
        text
    );
    let copy = store
        .copy_messages(account, inbox, &[uid], archive)
        .unwrap()[0]
        .1;
    assert_eq!(
        store.message_search_text(account, archive, copy).unwrap(),
        text
    );
    let plain = append(&store, account, inbox, &raw);
    assert_eq!(
        store.message_search_text(account, inbox, plain).unwrap(),
        Vec::<u8>::new(),
        "none given, none stored"
    );
    store.flush().unwrap();
    drop(store);
    assert_eq!(
        files_containing(&fx.store_path(), MARKER.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn one_delivery_to_several_accounts_and_the_queue_is_one_durable_write() {
    let fx = Fixture::new();
    let store = fx.create();
    let alice = add_account(&store, "alice");
    let bob = add_account(&store, "bob");
    let raw = message(21, 50_000);
    let targets = [
        DeliveryTarget {
            account: alice,
            placement: Placement::Sender { sent: false },
            outbound: Some(Outbound {
                from: format!("{MARKER}@clinic.example"),
                recipients: vec![OutboundRecipient {
                    address: format!("{MARKER}@elsewhere.example"),
                    notify: vec!["FAILURE".into()],
                    orcpt: None,
                    portal: None,
                }],
                env_id: Some("env-1".into()),
                ret: Some("HDRS".into()),
                notice: false,
            }),
        },
        DeliveryTarget {
            account: bob,
            placement: Placement::Inbox,
            outbound: None,
        },
    ];
    let new = NewMessage {
        raw: &raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: b"",
    };
    let audited = |done: &[sealpost_storage::Delivered]| {
        vec![AuditEvent::new(
            &Actor::cli(),
            "message.deliver",
            format!("{} targets", done.len()),
        )]
    };
    let before = store.audit_verify().unwrap().records_verified;
    let done = store.deliver_all(&targets, &new, &audited).unwrap();
    assert_eq!(
        store.audit_verify().unwrap().records_verified,
        before + 1,
        "the delivery's audit record"
    );
    assert_eq!(done.len(), 2);
    let queue_id = done[0].1.expect("alice's entry is queued");
    assert!(done[1].1.is_none());
    for (appended, _) in &done {
        for a in appended {
            let account = if appended.len() == 1 { alice } else { bob };
            assert_eq!(store.read_message(account, a.mailbox, a.uid).unwrap(), raw);
        }
    }
    // Bob's two copies and alice's copy and queue entry: one body each.
    assert_eq!(store.body_count(alice).unwrap(), 1);
    assert_eq!(store.body_count(bob).unwrap(), 1);

    // The queue survives a restart, sealed: the recipient is nowhere on disk.
    drop(store);
    let store = fx.open();
    let queued = store.queued().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].id, queue_id);
    assert_eq!(queued[0].account, alice);
    assert_eq!(queued[0].envelope, targets[0].outbound.clone().unwrap());
    assert_eq!(queued[0].size, raw.len() as u64);
    assert_eq!(store.read_queued(alice, queue_id).unwrap(), raw);
    store.flush().unwrap();
    assert!(files_containing(&fx.store_path(), MARKER.as_bytes()).is_empty());

    // A target without a mailbox refuses the whole delivery: nothing is written.
    let bad = [
        DeliveryTarget {
            account: bob,
            placement: Placement::Inbox,
            outbound: None,
        },
        DeliveryTarget {
            account: alice,
            placement: Placement::QueueOnly,
            outbound: None,
        },
    ];
    assert!(store.deliver_all(&bad, &new, &audited).is_err());
    assert_eq!(
        store.audit_verify().unwrap().records_verified,
        before + 1,
        "no record for a refusal"
    );
    assert_eq!(
        store
            .messages(bob, mailbox(&store, bob, "INBOX"))
            .unwrap()
            .len(),
        1
    );

    // Deleting the account deletes its queue.
    store.delete_account(alice, &Actor::cli()).unwrap();
    assert!(store.queued().unwrap().is_empty());
}

#[test]
fn queue_entries_record_each_recipient_and_go_with_their_last_pending_one() {
    let fx = Fixture::new();
    let store = fx.create();
    let alice = add_account(&store, "alice");
    let backup = mailbox(&store, alice, "BACKUP");
    let raw = message(31, 20_000);
    let recipient = |address: &str| OutboundRecipient {
        address: address.into(),
        notify: vec![],
        orcpt: None,
        portal: None,
    };
    let outbound = Outbound {
        from: "alice@clinic.example".into(),
        recipients: vec![recipient("a@one.example"), recipient("b@two.example")],
        env_id: None,
        ret: None,
        notice: false,
    };
    let new = NewMessage {
        raw: &raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: b"",
    };
    let (_, id) = store
        .deliver_all(&[sent_by(alice, &outbound)], &new, &|_| Vec::new())
        .unwrap()
        .remove(0);
    let id = id.unwrap();
    let entry = store.queued().unwrap().remove(0);
    assert!(entry.pending());
    assert_eq!(entry.states.len(), 2);

    // One delivered, one deferred: the entry stays, with one more attempt.
    let delivered = RecipientState {
        status: RecipientStatus::Delivered {
            at_ms: 1,
            how: "mx.one.example TLSv1_3".into(),
        },
        last_reply: Some("250 ok".into()),
    };
    let deferred = RecipientState {
        status: RecipientStatus::Pending,
        last_reply: Some("451 try later".into()),
    };
    let event = AuditEvent::new(&Actor::system(), "queue.attempt", "test");
    store
        .queue_update(
            alice,
            id,
            vec![delivered.clone(), deferred],
            123,
            vec![event.clone()],
        )
        .unwrap();
    let entry = store.queued().unwrap().remove(0);
    assert_eq!((entry.attempts, entry.next_attempt_ms), (1, 123));
    assert_eq!(entry.states[0], delivered);
    assert!(
        store
            .queue_update(alice, id, vec![delivered.clone()], 0, vec![])
            .is_err(),
        "states must match"
    );

    store.queue_retry(alice, id, &Actor::cli()).unwrap();
    assert!(store.queued().unwrap()[0].next_attempt_ms > 123);

    // The last pending recipient done: the entry goes; the BACKUP copy keeps the body.
    let portal = RecipientState {
        status: RecipientStatus::Portal {
            at_ms: 2,
            why: "no STARTTLS".into(),
        },
        last_reply: None,
    };
    store
        .queue_update(alice, id, vec![delivered, portal], 0, vec![event])
        .unwrap();
    assert!(store.queued().unwrap().is_empty());
    assert_eq!(store.body_count(alice).unwrap(), 1);
    assert_eq!(store.read_message(alice, backup, 1).unwrap(), raw);

    // Deleting an entry is audited and frees its reference to the body.
    let (_, id) = store
        .deliver_all(&[sent_by(alice, &outbound)], &new, &|_| Vec::new())
        .unwrap()
        .remove(0);
    let before = store.audit_verify().unwrap().records_verified;
    store
        .queue_delete(alice, id.unwrap(), &Actor::cli())
        .unwrap();
    assert!(store.queued().unwrap().is_empty());
    assert_eq!(store.audit_verify().unwrap().records_verified, before + 1);
    assert_eq!(
        store.body_count(alice).unwrap(),
        2,
        "two BACKUP copies, no queue reference"
    );
}

#[test]
fn pickups_are_found_by_token_only_hold_their_body_and_expire() {
    let fx = Fixture::new();
    let store = fx.create();
    let alice = add_account(&store, "alice");
    let raw = message(41, 30_000);
    let outbound = Outbound {
        from: "alice@clinic.example".into(),
        recipients: vec![OutboundRecipient {
            address: format!("{MARKER}@elsewhere.example"),
            notify: vec![],
            orcpt: None,
            portal: None,
        }],
        env_id: None,
        ret: None,
        notice: false,
    };
    let new = NewMessage {
        raw: &raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: b"",
    };
    let (_, id) = store
        .deliver_all(&[sent_by(alice, &outbound)], &new, &|_| Vec::new())
        .unwrap()
        .remove(0);
    let id = id.unwrap();
    let token = "a".repeat(64);
    let recipient = format!("{MARKER}@elsewhere.example");
    assert!(store
        .create_pickup(alice, id, &recipient, "short", i64::MAX)
        .is_err());
    // (Two pickups for one recipient only here; the delivery record names the newer.)
    let expired = "b".repeat(64);
    store
        .create_pickup(alice, id, &recipient, &expired, 1)
        .unwrap();
    store
        .create_pickup(alice, id, &recipient, &token, i64::MAX)
        .unwrap();

    let pickup = store.pickup(&token).unwrap().unwrap();
    assert_eq!(
        (
            pickup.account,
            pickup.recipient.as_str(),
            pickup.queue,
            pickup.state
        ),
        (alice, recipient.as_str(), id, PickupState::Live)
    );
    assert_eq!(pickup.id, store.pickup_id(&token));
    assert_eq!(store.read_pickup(&token).unwrap().unwrap(), raw);
    // An expired link is still known, as expired, and opens nothing.
    assert_eq!(
        store.pickup(&expired).unwrap().unwrap().state,
        PickupState::Expired
    );
    assert_eq!(store.read_pickup(&expired).unwrap(), None);
    assert_eq!(store.pickup(&"c".repeat(64)).unwrap(), None, "unknown");
    // The portal lists a recipient's pickups by address, and nobody else's.
    assert_eq!(
        store.pickups_for(&recipient.to_uppercase()).unwrap().len(),
        2
    );
    assert!(store
        .pickups_for("someone@elsewhere.example")
        .unwrap()
        .is_empty());

    // The queue entry finished (the recipient went to the portal): the pickup keeps the body,
    // and the delivery record keeps the outcome after the entry is gone.
    let portal = RecipientState {
        status: RecipientStatus::Portal {
            at_ms: 1,
            why: "no STARTTLS".into(),
        },
        last_reply: None,
    };
    store
        .queue_update(alice, id, vec![portal.clone()], 0, vec![])
        .unwrap();
    assert!(store.queued().unwrap().is_empty());
    assert_eq!(store.read_pickup(&token).unwrap().unwrap(), raw);
    let delivery = store.delivery(alice, id).unwrap().unwrap();
    assert_eq!(delivery.lines.len(), 1);
    assert_eq!(delivery.lines[0].status, portal.status);
    assert_eq!(delivery.lines[0].opened_ms, None);
    assert_eq!(store.deliveries(alice).unwrap(), vec![delivery]);

    // The first read by the recipient marks it opened, with its audit record.
    let reader = Actor {
        name: format!("portal:{recipient}"),
        peer: "127.0.0.1".into(),
    };
    let read = AuditEvent::new(&reader, "pickup.read", "portal view");
    assert_eq!(
        store
            .read_pickup_audited(pickup.id, read.clone())
            .unwrap()
            .unwrap(),
        raw
    );
    let opened = store.delivery(alice, id).unwrap().unwrap().lines[0].opened_ms;
    assert!(opened.is_some());
    assert_eq!(store.pickup(&token).unwrap().unwrap().opened_ms, opened);
    store
        .read_pickup_audited(pickup.id, read.clone())
        .unwrap()
        .unwrap();
    assert_eq!(
        store.delivery(alice, id).unwrap().unwrap().lines[0].opened_ms,
        opened,
        "the first read counts"
    );
    let reply = PortalReply {
        at_ms: 5,
        text: format!("thanks {MARKER}"),
        attachments: vec![],
    };
    store
        .record_portal_reply(
            pickup.id,
            reply.clone(),
            1_000,
            AuditEvent::new(&reader, "pickup.reply", "x"),
        )
        .unwrap();
    assert_eq!(
        store.pickup(&token).unwrap().unwrap().replies,
        vec![reply.clone()]
    );
    // Reply bytes add up over the pickup's life.
    assert_eq!(store.portal_reply_bytes(pickup.id).unwrap(), 1_000);
    store
        .record_portal_reply(
            pickup.id,
            reply,
            500,
            AuditEvent::new(&reader, "pickup.reply", "x"),
        )
        .unwrap();
    assert_eq!(store.portal_reply_bytes(pickup.id).unwrap(), 1_500);

    // Expired pickups end, and with them their hold on the body; live ones stay.
    assert_eq!(store.expire_pickups(i64::MAX - 1).unwrap(), 1);
    assert_eq!(store.expire_pickups(i64::MAX - 1).unwrap(), 0);
    assert_eq!(store.read_pickup(&token).unwrap().unwrap(), raw);
    // An ended link may ask the sender for a new one, once; a live one may not.
    let ask = AuditEvent::new(&reader, "pickup.renewal", "x");
    let expired_id = store.pickup_id(&expired);
    assert!(!store.ask_pickup_renewal(pickup.id, ask.clone()).unwrap());
    assert!(store.ask_pickup_renewal(expired_id, ask.clone()).unwrap());
    assert!(!store.ask_pickup_renewal(expired_id, ask).unwrap());
    // The sender withdraws the live one: it opens no more, and the record says when.
    assert!(store
        .revoke_pickup(alice, id, &recipient, &Actor::cli())
        .unwrap());
    assert!(
        !store
            .revoke_pickup(alice, id, &recipient, &Actor::cli())
            .unwrap(),
        "once"
    );
    assert_eq!(
        store.pickup(&token).unwrap().unwrap().state,
        PickupState::Revoked
    );
    assert_eq!(store.read_pickup(&token).unwrap(), None);
    assert_eq!(store.read_pickup_audited(pickup.id, read).unwrap(), None);
    assert!(store.delivery(alice, id).unwrap().unwrap().lines[0]
        .revoked_ms
        .is_some());
    // Neither the token nor the recipient is on disk.
    store.flush().unwrap();
    assert!(files_containing(&fx.store_path(), token.as_bytes()).is_empty());
    assert!(files_containing(&fx.store_path(), MARKER.as_bytes()).is_empty());
    store.delete_account(alice, &Actor::cli()).unwrap();
    assert_eq!(
        store.pickup(&token).unwrap(),
        None,
        "deleted with the account"
    );
    assert!(store.pickups_for(&recipient).unwrap().is_empty());
}

#[test]
fn ended_pickups_are_forgotten_after_their_tombstone_time() {
    let fx = Fixture::new();
    let store = fx.create();
    let alice = add_account(&store, "alice");
    let raw = message(42, 1_000);
    let outbound = Outbound {
        from: "alice@clinic.example".into(),
        recipients: vec![OutboundRecipient {
            address: "pat@elsewhere.example".into(),
            ..OutboundRecipient::default()
        }],
        ..Outbound::default()
    };
    let new = NewMessage {
        raw: &raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: b"",
    };
    let (_, id) = store
        .deliver_all(&[sent_by(alice, &outbound)], &new, &|_| Vec::new())
        .unwrap()
        .remove(0);
    let token = "d".repeat(64);
    store
        .create_pickup(alice, id.unwrap(), "pat@elsewhere.example", &token, 1_000)
        .unwrap();
    assert_eq!(store.expire_pickups(2_000).unwrap(), 1);
    assert_eq!(
        store.pickup(&token).unwrap().unwrap().state,
        PickupState::Expired
    );
    store
        .expire_pickups(2_000 + PICKUP_TOMBSTONE_MS - 1)
        .unwrap();
    assert!(
        store.pickup(&token).unwrap().is_some(),
        "kept for its tombstone time"
    );
    store.expire_pickups(2_001 + PICKUP_TOMBSTONE_MS).unwrap();
    assert_eq!(store.pickup(&token).unwrap(), None, "forgotten");
    assert!(store
        .pickups_for("pat@elsewhere.example")
        .unwrap()
        .is_empty());
}

#[test]
fn cached_values_are_sealed_and_survive_a_restart() {
    let fx = Fixture::new();
    let store = fx.create();
    let name = format!("{MARKER}.example");
    store.cache("mta-sts", &name, MARKER.as_bytes()).unwrap();
    assert_eq!(
        store.cached("mta-sts", &name).unwrap().as_deref(),
        Some(MARKER.as_bytes())
    );
    assert_eq!(store.cached("other", &name).unwrap(), None, "kinds apart");
    assert!(store
        .cache("mta-sts", &name, &vec![0; 64 * 1024 + 1])
        .is_err());
    drop(store);
    let store = fx.open();
    assert_eq!(
        store.cached("mta-sts", &name).unwrap().as_deref(),
        Some(MARKER.as_bytes())
    );
    store.flush().unwrap();
    assert!(files_containing(&fx.store_path(), MARKER.as_bytes()).is_empty());
}

#[test]
fn secrets_are_sealed_audited_by_name_and_survive_master_key_rotation() {
    let fx = Fixture::new();
    let store = fx.create();
    store
        .set_secret("dkim-test", MARKER.as_bytes(), &Actor::cli())
        .unwrap();
    assert!(store
        .set_secret("big", &vec![0; SECRET_BYTES_MAX + 1], &Actor::cli())
        .is_err());
    store
        .set_secret("just-fits", &vec![0; SECRET_BYTES_MAX], &Actor::cli())
        .unwrap();
    assert_eq!(store.secret("missing").unwrap(), None);
    let new_key = fx.dir.path().join("rotated.key");
    store
        .rotate_master_key(MasterKey::create_file(&new_key).unwrap(), &Actor::cli())
        .unwrap();
    assert_eq!(
        store.secret("dkim-test").unwrap().as_deref(),
        Some(MARKER.as_bytes())
    );
    store.flush().unwrap();
    assert!(files_containing(&fx.store_path(), MARKER.as_bytes()).is_empty());
    let mut audited = Vec::new();
    store
        .audit_records(0, &mut |r| {
            audited.push(format!("{:?}", r.event));
            Ok(())
        })
        .unwrap();
    assert!(audited
        .iter()
        .any(|e| e.contains("secret.set") && e.contains("dkim-test")));
    assert!(
        !audited.iter().any(|e| e.contains(MARKER)),
        "the value is not audited"
    );
}

#[test]
fn credentials_and_web_sessions_are_sealed_serialised_and_go_with_the_account() {
    let fx = Fixture::new();
    let store = Arc::new(fx.create());
    fn new(address: &str) -> NewAccount<'_> {
        NewAccount {
            address,
            display_name: "",
            role: Role::Staff,
            password: None,
        }
    }
    let alice = store
        .create_account(&new("alice@clinic.example"), &Actor::cli())
        .unwrap();
    let bob = store
        .create_account(&new("bob@clinic.example"), &Actor::cli())
        .unwrap();
    assert_eq!(store.credentials(alice).unwrap(), None);
    // Sixteen threads each add one byte to the record: none is lost.
    let threads: Vec<_> = (0..16u8)
        .map(|n| {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .update_credentials(alice, |current| {
                        let mut record =
                            current.map_or_else(|| MARKER.as_bytes().to_vec(), <[u8]>::to_vec);
                        record.push(n);
                        Some((record, vec![]))
                    })
                    .unwrap()
            })
        })
        .collect();
    for thread in threads {
        assert!(thread.join().unwrap());
    }
    let record = store.credentials(alice).unwrap().unwrap();
    assert_eq!(record.len(), MARKER.len() + 16);
    assert!(
        !store.update_credentials(alice, |_| None).unwrap(),
        "no change, no write"
    );
    let too_big = store.update_credentials(alice, |_| Some((vec![0; 256 * 1024 + 1], vec![])));
    assert!(matches!(too_big, Err(Error::LimitExceeded { .. })));
    assert_eq!(
        store.credentials(bob).unwrap(),
        None,
        "one account's record is its own"
    );

    let event = AuditEvent::new(&Actor::cli(), "auth.session.start", "account:1");
    store
        .put_web_session(alice, &[1; 16], MARKER.as_bytes(), vec![event])
        .unwrap();
    store
        .put_web_session(alice, &[2; 16], b"second", vec![])
        .unwrap();
    store
        .put_web_session(bob, &[3; 16], b"bob's", vec![])
        .unwrap();
    let ids: Vec<[u8; 16]> = store
        .web_sessions(alice)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, vec![[1; 16], [2; 16]]);
    assert_eq!(
        store.web_session(alice, &[1; 16]).unwrap().as_deref(),
        Some(MARKER.as_bytes())
    );
    assert_eq!(
        store.web_session(alice, &[3; 16]).unwrap(),
        None,
        "bob's id under alice"
    );
    store
        .delete_web_sessions(alice, Some(&[[1; 16]]), vec![])
        .unwrap();
    assert_eq!(store.web_sessions(alice).unwrap().len(), 1);
    store.flush().unwrap();
    assert!(
        files_containing(&fx.store_path(), MARKER.as_bytes()).is_empty(),
        "records are sealed"
    );
    store.delete_web_sessions(alice, None, vec![]).unwrap();
    assert!(
        store.web_sessions(alice).unwrap().is_empty(),
        "sign out everywhere"
    );
    assert_eq!(store.web_sessions(bob).unwrap().len(), 1);

    store
        .put_web_session(alice, &[4; 16], b"x", vec![])
        .unwrap();
    store.delete_account(alice, &Actor::cli()).unwrap();
    assert!(matches!(store.credentials(alice), Ok(None)));
    assert!(matches!(store.web_session(alice, &[4; 16]), Ok(None)));
    assert_eq!(store.web_sessions(bob).unwrap().len(), 1);
}

#[test]
fn audit_search_finds_by_words_and_time_newest_first_in_pages() {
    let fx = Fixture::new();
    let store = fx.create();
    let before_all = store
        .audit_search(&AuditSearch {
            limit: 10,
            ..AuditSearch::default()
        })
        .unwrap()
        .matched;
    let actor = |name: &str| Actor {
        name: format!("{name}@clinic.example"),
        peer: "127.0.0.1:4000".into(),
    };
    // Three rounds apart in time: (actor, action, object, detail) cycles, 1,200 records each.
    let mut marks = Vec::new();
    for round in 0..3 {
        marks.push(
            i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
            )
            .unwrap(),
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        let events: Vec<AuditEvent> = (0..1_200)
            .map(|i| {
                let who = ["alice", "bob", "root"][i % 3];
                let action = [
                    "message.read",
                    "message.deliver",
                    "login.imap",
                    "account.create",
                ][i % 4];
                AuditEvent::new(&actor(who), action, format!("mailbox:{} uids:{i}", i % 5))
                    .detail(format!("round{round} imap BODY[]"))
            })
            .collect();
        for chunk in events.chunks(400) {
            store.audit_all(chunk.to_vec()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let search = |search: AuditSearch| {
        store
            .audit_search(&AuditSearch {
                limit: 50,
                ..search
            })
            .unwrap()
    };
    let all = search(AuditSearch::default());
    assert_eq!(all.matched, before_all + 3_600);
    // By actor word (a part of the address), action prefix and exact action, object word.
    let bob = search(AuditSearch {
        actor: Some("bob".into()),
        ..AuditSearch::default()
    });
    assert_eq!((bob.matched, bob.matched_exact), (1_200, true));
    assert!(bob
        .records
        .iter()
        .all(|r| r.event.actor == "bob@clinic.example"));
    assert!(
        bob.records.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first"
    );
    let messages = search(AuditSearch {
        action: Some("message.".into()),
        ..AuditSearch::default()
    });
    assert_eq!(messages.matched, 1_800);
    let reads_by_alice_in_mailbox_2 = search(AuditSearch {
        actor: Some("alice@clinic.example".into()),
        action: Some("message.read".into()),
        object: Some("mailbox:2".into()),
        ..AuditSearch::default()
    });
    // i % 3 == 0, i % 4 == 0, i % 5 == 2: i ≡ 12 (mod 60): 20 a round.
    assert_eq!(reads_by_alice_in_mailbox_2.matched, 60);
    assert!(reads_by_alice_in_mailbox_2
        .records
        .iter()
        .all(|r| r.event.action == "message.read"
            && r.event.actor.starts_with("alice")
            && r.event.object.starts_with("mailbox:2 ")));
    // Words anywhere, and a time range: only the middle round.
    let middle = search(AuditSearch {
        text: Some("round1".into()),
        ..AuditSearch::default()
    });
    assert_eq!(middle.matched, 1_200);
    let by_time = search(AuditSearch {
        since_ms: Some(marks[1]),
        before_ms: Some(marks[2]),
        ..AuditSearch::default()
    });
    assert_eq!(by_time.matched, 1_200);
    assert!(by_time
        .records
        .iter()
        .all(|r| r.event.detail.starts_with("round1")));
    let bob_in_time = search(AuditSearch {
        actor: Some("bob".into()),
        since_ms: Some(marks[2]),
        ..AuditSearch::default()
    });
    assert_eq!(bob_in_time.matched, 400);
    // Paging: each page continues where the last stopped, and together they are all matches.
    let mut seen = std::collections::BTreeSet::new();
    let mut older_than = None;
    for _ in 0..100 {
        let page = search(AuditSearch {
            actor: Some("bob".into()),
            older_than,
            ..AuditSearch::default()
        });
        if page.records.is_empty() {
            break;
        }
        for record in &page.records {
            assert!(seen.insert(record.seq), "record {} twice", record.seq);
        }
        older_than = page.records.last().map(|r| r.seq);
    }
    assert_eq!(seen.len(), 1_200);
    // Nothing, for a word no record has; the index survives a restart.
    assert_eq!(
        search(AuditSearch {
            text: Some("nowhere".into()),
            ..AuditSearch::default()
        })
        .matched,
        0
    );
    drop(store);
    let store = fx.open();
    let again = store
        .audit_search(&AuditSearch {
            actor: Some("bob".into()),
            limit: 5,
            ..AuditSearch::default()
        })
        .unwrap();
    assert_eq!((again.matched, again.records.len()), (1_200, 5));
    // Neither the words nor the records are in the store's files in the clear.
    store.flush().unwrap();
    assert!(files_containing(&fx.store_path(), b"round1").is_empty());
}

#[test]
fn audit_search_counts_exactly_up_to_its_bound() {
    let fx = Fixture::new();
    let store = fx.create();
    let actor = Actor {
        name: "bulk@clinic.example".into(),
        peer: "local".into(),
    };
    let events: Vec<AuditEvent> = (0..AUDIT_COUNT_EXACT_MAX + 5)
        .map(|i| AuditEvent::new(&actor, "message.read", format!("uids:{i}")))
        .collect();
    for chunk in events.chunks(1_000) {
        store.audit_all(chunk.to_vec()).unwrap();
    }
    let page = store
        .audit_search(&AuditSearch {
            actor: Some("bulk".into()),
            limit: 10,
            ..AuditSearch::default()
        })
        .unwrap();
    assert_eq!(
        (page.matched, page.matched_exact, page.records.len()),
        (AUDIT_COUNT_EXACT_MAX, false, 10)
    );
}

#[test]
fn placements_are_filed_by_the_store_with_backup_and_quarantine_in_the_same_write() {
    let fx = Fixture::new();
    let store = fx.create();
    let alice = add_account(&store, "alice");
    let bob = add_account(&store, "bob");
    let carol = add_account(&store, "carol");
    let raw = message(31, 5_000);
    let new = NewMessage {
        raw: &raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: b"",
    };
    let held = Held {
        actor: Actor::cli(),
        verdict: "score=30".into(),
        sender: "x@spam.example".into(),
        subject: "win".into(),
        expires_ms: sealpost_storage::now_ms() + 86_400_000,
    };
    let target = |account, placement| DeliveryTarget {
        account,
        placement,
        outbound: None,
    };
    let count = |account, name: &str| {
        store
            .messages(account, mailbox(&store, account, name))
            .unwrap()
            .len()
    };
    let before = store.audit_verify().unwrap().records_verified;
    let done = store
        .deliver_all(
            &[
                target(alice, Placement::Inbox),
                target(bob, Placement::Junk),
                target(carol, Placement::Quarantine(held.clone())),
            ],
            &new,
            &|_| Vec::new(),
        )
        .unwrap();
    assert_eq!(done.len(), 3);
    assert_eq!(
        (
            count(alice, "INBOX"),
            count(alice, "BACKUP"),
            count(alice, "Junk")
        ),
        (1, 1, 0)
    );
    assert_eq!(
        (
            count(bob, "INBOX"),
            count(bob, "BACKUP"),
            count(bob, "Junk")
        ),
        (0, 1, 1)
    );
    assert_eq!(
        (
            count(carol, "INBOX"),
            count(carol, "BACKUP"),
            count(carol, "Junk")
        ),
        (0, 0, 0)
    );
    let kept = store.quarantined(carol).unwrap();
    assert_eq!((kept.len(), kept[0].verdict.as_str()), (1, "score=30"));
    assert_eq!(store.read_quarantined(carol, &kept[0].id).unwrap(), raw);
    assert_eq!(
        store.audit_verify().unwrap().records_verified,
        before + 1,
        "the hold's audit record, in the same write"
    );

    // Writing to oneself from the web: one copy each in INBOX, BACKUP and Sent, one body.
    store
        .deliver_all(
            &[
                target(alice, Placement::Inbox),
                target(alice, Placement::Sender { sent: true }),
            ],
            &new,
            &|_| Vec::new(),
        )
        .unwrap();
    assert_eq!(
        (
            count(alice, "INBOX"),
            count(alice, "BACKUP"),
            count(alice, "Sent")
        ),
        (2, 2, 1)
    );
    assert_eq!(store.body_count(alice).unwrap(), 2);

    // Quota, for mail from others: an account at its quota refuses the message for every
    // recipient (nothing written); an account under it takes it, even past it (a sender
    // cannot make a message smaller). The server's own notice still arrives, and the
    // sender's copy of what they send is not held to it. APPEND must fit.
    let used = store.quota_usage(bob).unwrap();
    store.set_quota(bob, Some(used), &Actor::cli()).unwrap();
    let refused = store.deliver_all(
        &[
            target(alice, Placement::Inbox),
            target(bob, Placement::Inbox),
        ],
        &new,
        &|_| Vec::new(),
    );
    assert!(
        matches!(refused, Err(Error::OverQuota { used: u, .. }) if u == used),
        "{refused:?}"
    );
    assert_eq!((count(alice, "INBOX"), count(bob, "INBOX")), (2, 0));
    store.set_quota(bob, Some(used + 1), &Actor::cli()).unwrap();
    store
        .deliver_all(
            &[
                target(alice, Placement::Inbox),
                target(bob, Placement::Inbox),
            ],
            &new,
            &|_| Vec::new(),
        )
        .unwrap();
    assert_eq!((count(alice, "INBOX"), count(bob, "INBOX")), (3, 1));
    assert!(
        store.quota_usage(bob).unwrap() > used + 1,
        "one message took it past"
    );
    store
        .deliver_all(&[target(bob, Placement::Notice)], &new, &|_| Vec::new())
        .unwrap();
    assert_eq!(count(bob, "INBOX"), 2);
    store
        .deliver_all(
            &[target(bob, Placement::Sender { sent: true })],
            &new,
            &|_| Vec::new(),
        )
        .unwrap();
    assert_eq!(count(bob, "Sent"), 1);
    let (alice_inbox, room) = (mailbox(&store, alice, "INBOX"), raw.len() as u64 - 1);
    store
        .set_quota(
            alice,
            Some(store.quota_usage(alice).unwrap() + room),
            &Actor::cli(),
        )
        .unwrap();
    assert!(matches!(
        store.append(alice, alice_inbox, &new),
        Err(Error::OverQuota { .. })
    ));
    store
        .deliver_all(&[target(alice, Placement::Inbox)], &new, &|_| Vec::new())
        .unwrap();

    // COPY is the account's own act, as APPEND is: refused past the quota, nothing written.
    // MOVE changes no total that counts, so it goes on.
    let alice_sent = mailbox(&store, alice, "Sent");
    let (inbox_before, sent_before) = (count(alice, "INBOX"), count(alice, "Sent"));
    assert!(matches!(
        store.copy_messages(alice, alice_inbox, &[1], alice_sent),
        Err(Error::OverQuota { .. })
    ));
    assert_eq!(
        count(alice, "Sent"),
        sent_before,
        "a refused COPY writes nothing"
    );
    store
        .move_messages(alice, alice_inbox, &[1], alice_sent)
        .unwrap();
    assert_eq!(
        (count(alice, "INBOX"), count(alice, "Sent")),
        (inbox_before - 1, sent_before + 1)
    );
    store.set_quota(alice, None, &Actor::cli()).unwrap();
    store
        .copy_messages(alice, alice_sent, &[sent_before as u32 + 1], alice_inbox)
        .unwrap();

    // Releasing a held message is mail from others arriving late: an account at its quota
    // refuses it, and it stays held.
    let carol_used = store.quota_usage(carol).unwrap();
    store
        .set_quota(carol, Some(carol_used), &Actor::cli())
        .unwrap();
    assert!(matches!(
        store.release_quarantined(carol, &kept[0].id, &Actor::cli()),
        Err(Error::OverQuota { .. })
    ));
    assert_eq!(store.quarantined(carol).unwrap().len(), 1, "still held");
    store.set_quota(carol, None, &Actor::cli()).unwrap();
    store
        .release_quarantined(carol, &kept[0].id, &Actor::cli())
        .unwrap();
    assert_eq!((count(carol, "INBOX"), count(carol, "BACKUP")), (1, 1));
}

/// The sender's part of a submission: its BACKUP copy and the queue entry, as SMTP writes it.
fn sent_by(account: sealpost_storage::AccountId, outbound: &Outbound) -> DeliveryTarget {
    DeliveryTarget {
        account,
        placement: Placement::Sender { sent: false },
        outbound: Some(outbound.clone()),
    }
}

/// The hot paths read no whole mailbox list beyond what they need: an APPEND to an account
/// without a quota reads none, a delivery one per account (its folders found in one read).
#[test]
fn append_reads_no_mailbox_list_and_a_delivery_one() {
    let fx = Fixture::new();
    let store = fx.create();
    let alice = add_account(&store, "alice");
    let inbox = mailbox(&store, alice, "INBOX");
    let raw = message(7, 3_000);
    let new = NewMessage {
        raw: &raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"",
        search_text: b"",
    };
    let before = store.mailbox_scans();
    store.append(alice, inbox, &new).unwrap();
    assert_eq!(store.mailbox_scans(), before, "APPEND without a quota");
    let target = DeliveryTarget {
        account: alice,
        placement: Placement::Inbox,
        outbound: None,
    };
    let before = store.mailbox_scans();
    store.deliver_all(&[target], &new, &|_| Vec::new()).unwrap();
    assert_eq!(store.mailbox_scans(), before + 1, "one delivery");
}
