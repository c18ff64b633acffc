//! Retention rules and legal holds against the real store: what a hold or a minimum age keeps
//! survives expunge, folder delete, the sweeper and account deletion; what a maximum age
//! ends goes at the right time (the sweeper takes the time as a test clock); every
//! destruction is audited by message and rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use sealpost_storage::{
    now_ms, Actor, AuditSearch, Error, FlagChange, Flags, InternalDate, MailboxId, NewMessage,
    RetentionRule, Store, SystemFlag,
};

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Appends a message whose internal date is `days_old` days before now; returns its UID.
fn put(
    store: &Store,
    account: sealpost_storage::AccountId,
    mailbox: MailboxId,
    days_old: i64,
    text: &str,
) -> u32 {
    let raw = format!("Subject: {text}\r\nMessage-ID: <{text}@clinic.example>\r\n\r\n{text}\r\n");
    store
        .append(
            account,
            mailbox,
            &NewMessage {
                raw: raw.as_bytes(),
                flags: Flags::new(),
                internal_date: InternalDate {
                    unix_seconds: (now_ms() - days_old * DAY_MS) / 1000,
                    offset_minutes: 0,
                },
                summary: text.as_bytes(),
                search_text: text.as_bytes(),
            },
        )
        .unwrap()
        .uid
}

fn expunge(store: &Store, account: sealpost_storage::AccountId, mailbox: MailboxId, uid: u32) {
    let deleted = Flags::new().with(SystemFlag::Deleted);
    store
        .store_flags(account, mailbox, &[uid], &FlagChange::Add(deleted), None)
        .unwrap();
    assert_eq!(
        store
            .expunge_deleted(account, mailbox, Some(&[uid]))
            .unwrap(),
        vec![uid]
    );
}

fn uids(store: &Store, account: sealpost_storage::AccountId, mailbox: MailboxId) -> Vec<u32> {
    store
        .messages(account, mailbox)
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect()
}

fn rule(name: &str, folders: &[&str], max: Option<u32>, min: Option<u32>) -> RetentionRule {
    RetentionRule {
        name: name.into(),
        folders: folders.iter().map(|f| f.to_string()).collect(),
        accounts: vec![],
        max_age_days: max,
        min_age_days: min,
    }
}

#[test]
fn a_held_account_loses_nothing_by_any_path_until_the_hold_is_released() {
    let fx = Fixture::new();
    let store = fx.create();
    let admin = Actor::cli();
    let held = add_account(&store, "held@clinic.example");
    let free = add_account(&store, "free@clinic.example");
    let inbox = |a| mailbox(&store, a, "INBOX");
    let projects = store.create_mailbox(held, "Projects", None).unwrap();
    let old_held = put(&store, held, inbox(held), 400, "old-held");
    let new_held = put(&store, held, inbox(held), 1, "new-held");
    let in_projects = put(&store, held, projects, 500, "in-projects");
    let old_free = put(&store, free, inbox(free), 400, "old-free");
    store
        .set_retention_rules(&[rule("a-year", &[], Some(365), None)], &admin)
        .unwrap();

    let case = store
        .open_hold("Case 2026-17", "litigation", &admin)
        .unwrap();
    store
        .hold_add_custodian(case, held, None, None, &admin)
        .unwrap();
    assert!(store.is_held(held).unwrap());

    // The user expunges and deletes a folder: gone from their view, kept in the store.
    expunge(&store, held, inbox(held), old_held);
    assert_eq!(uids(&store, held, inbox(held)), vec![new_held]);
    store.delete_mailbox(held, "Projects").unwrap();
    assert!(store.mailbox_by_name(held, "Projects").unwrap().is_none());
    let kept = store.kept_messages(held).unwrap();
    assert_eq!(
        kept.len(),
        2,
        "the expunged and the deleted folder's message are kept"
    );
    let mut texts: Vec<String> = kept
        .iter()
        .map(|k| String::from_utf8(store.read_kept(held, &k.id).unwrap()).unwrap())
        .collect();
    texts.sort();
    assert!(
        texts[0].contains("in-projects") && texts[1].contains("old-held"),
        "{texts:?}"
    );
    let _ = in_projects;

    // The sweeper takes the free account's old message, nothing of the held one.
    let swept = store.retention_sweep(now_ms(), false, &admin).unwrap();
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert_eq!(
        (swept[0].account, swept[0].uid, swept[0].rule.as_str()),
        (free, Some(old_free), "a-year")
    );
    assert!(uids(&store, free, inbox(free)).is_empty());
    assert_eq!(store.kept_messages(held).unwrap().len(), 2);

    // Deleting the held account is refused, clearly, and audited as denied.
    match store.delete_account(held, &admin) {
        Err(Error::Kept { reason }) => assert!(reason.contains("legal hold"), "{reason}"),
        other => panic!("deleting a held account: {other:?}"),
    }
    assert!(store.account(held).is_ok());

    // Released: retention takes its course, and the account can go.
    store.release_hold(case, &admin).unwrap();
    assert!(!store.is_held(held).unwrap());
    let dry = store.retention_sweep(now_ms(), true, &admin).unwrap();
    assert_eq!(dry.len(), 2, "the two kept messages: {dry:?}");
    assert_eq!(
        store.kept_messages(held).unwrap().len(),
        2,
        "a dry run changes nothing"
    );
    let swept = store.retention_sweep(now_ms(), false, &admin).unwrap();
    assert_eq!(swept.len(), 2);
    assert!(store.kept_messages(held).unwrap().is_empty());
    assert_eq!(
        uids(&store, held, inbox(held)),
        vec![new_held],
        "the young message stays"
    );
    store.delete_account(held, &admin).unwrap();

    let audit = store
        .audit_search(&AuditSearch {
            action: Some("retention.destroy".into()),
            limit: 100,
            ..AuditSearch::default()
        })
        .unwrap();
    assert_eq!(audit.matched, 3, "one record per destroyed message");
    assert!(audit
        .records
        .iter()
        .any(|r| r.event.detail.contains("rule a-year")));
    for action in [
        "hold.open",
        "hold.custodian.add",
        "hold.release",
        "retention.rules",
    ] {
        let found = store
            .audit_search(&AuditSearch {
                action: Some(action.into()),
                limit: 10,
                ..AuditSearch::default()
            })
            .unwrap();
        assert_eq!(found.matched, 1, "{action}");
    }
}

#[test]
fn a_minimum_age_outweighs_a_maximum_age_and_a_users_expunge_until_it_has_passed() {
    let fx = Fixture::new();
    let store = fx.create();
    let admin = Actor::cli();
    let account = add_account(&store, "doc@clinic.example");
    let trash = store
        .mailbox_by_special_use(account, sealpost_storage::SpecialUse::Trash)
        .unwrap()
        .expect("accounts are made with a Trash")
        .id;
    let inbox = mailbox(&store, account, "INBOX");
    let young_trash = put(&store, account, trash, 40, "young-trash");
    let ancient_trash = put(&store, account, trash, 7 * 366, "ancient-trash");
    let fresh = put(&store, account, inbox, 10, "fresh");
    store
        .set_retention_rules(
            &[
                rule("trash-30d", &["\\Trash"], Some(30), None),
                rule("six-years", &[], None, Some(6 * 365)),
            ],
            &admin,
        )
        .unwrap();

    // Now: the ancient message in Trash goes; the 40-day-old one is past Trash's 30 days but
    // inside the six years, so it stays.
    let swept = store.retention_sweep(now_ms(), false, &admin).unwrap();
    assert_eq!(
        swept.iter().map(|d| d.uid).collect::<Vec<_>>(),
        vec![Some(ancient_trash)]
    );
    assert_eq!(uids(&store, account, trash), vec![young_trash]);

    // The user expunges inside the minimum age: hidden from them, kept.
    expunge(&store, account, inbox, fresh);
    assert!(uids(&store, account, inbox).is_empty());
    assert_eq!(store.kept_messages(account).unwrap().len(), 1);
    assert!(matches!(
        store.delete_account(account, &admin),
        Err(Error::Kept { .. })
    ));
    assert!(store
        .retention_sweep(now_ms(), false, &admin)
        .unwrap()
        .is_empty());

    // Six years on (the sweeper's clock), both are destroyed; the account can be deleted.
    let later = now_ms() + 6 * 366 * DAY_MS;
    let swept = store.retention_sweep(later, false, &admin).unwrap();
    assert_eq!(swept.len(), 2, "{swept:?}");
    assert!(swept
        .iter()
        .any(|d| d.rule == "trash-30d" && d.uid == Some(young_trash)));
    assert!(swept
        .iter()
        .any(|d| d.kept.is_some() && d.rule == "removed by its owner"));
    assert!(store.kept_messages(account).unwrap().is_empty());
    assert!(uids(&store, account, trash).is_empty());
    // The bodies are gone with their last reference.
    assert_eq!(store.body_count(account).unwrap(), 0);
}

#[test]
fn a_hold_narrowed_to_dates_keeps_only_that_range_and_bad_rules_are_refused() {
    let fx = Fixture::new();
    let store = fx.create();
    let admin = Actor::cli();
    let account = add_account(&store, "nurse@clinic.example");
    let inbox = mailbox(&store, account, "INBOX");
    let in_range = put(&store, account, inbox, 100, "in-range");
    let outside = put(&store, account, inbox, 10, "outside");
    let case = store.open_hold("Audit Q3", "regulator", &admin).unwrap();
    store
        .hold_add_custodian(
            case,
            account,
            Some(now_ms() - 200 * DAY_MS),
            Some(now_ms() - 50 * DAY_MS),
            &admin,
        )
        .unwrap();
    expunge(&store, account, inbox, in_range);
    expunge(&store, account, inbox, outside);
    let kept = store.kept_messages(account).unwrap();
    assert_eq!(
        kept.len(),
        1,
        "only the message in the hold's range is kept"
    );
    assert!(
        String::from_utf8(store.read_kept(account, &kept[0].id).unwrap())
            .unwrap()
            .contains("in-range")
    );
    // A hold on an account refuses its deletion whatever the range.
    assert!(matches!(
        store.delete_account(account, &admin),
        Err(Error::Kept { .. })
    ));

    for bad in [
        vec![rule("", &[], Some(1), None)],
        vec![rule("nothing", &[], None, None)],
        vec![rule("inverted", &[], Some(10), Some(20))],
        vec![rule("zero", &[], Some(0), None)],
        vec![
            rule("twice", &[], Some(1), None),
            rule("twice", &[], Some(2), None),
        ],
    ] {
        assert!(store.set_retention_rules(&bad, &admin).is_err(), "{bad:?}");
    }
    assert!(
        store.retention_rules().unwrap().is_empty(),
        "refused rules change nothing"
    );
}

#[test]
fn quarantined_mail_is_in_no_folder_until_released_whole_and_expires_unless_held() {
    let fx = Fixture::new();
    let store = fx.create();
    let admin = Actor::cli();
    let account = add_account(&store, "doc@clinic.example");
    let raw = b"Subject: prize\r\n\r\nYou won.\r\n";
    let message = NewMessage {
        raw,
        flags: Flags::new(),
        internal_date: InternalDate::now(),
        summary: b"prize",
        search_text: b"",
    };
    let now = now_ms();
    let held = sealpost_storage::Held {
        actor: admin.clone(),
        verdict: "score=20".into(),
        sender: "win@lottery.test".into(),
        subject: "prize".into(),
        expires_ms: now + DAY_MS,
    };
    let first = store.quarantine(account, &message, held.clone()).unwrap();
    let second = store.quarantine(account, &message, held.clone()).unwrap();
    for mailbox in store.list_mailboxes(account).unwrap() {
        assert!(
            store.messages(account, mailbox.id).unwrap().is_empty(),
            "{} has it",
            mailbox.name
        );
    }
    assert_eq!(store.quarantined(account).unwrap().len(), 2);
    assert_eq!(store.read_quarantined(account, &first).unwrap(), raw);
    store.release_quarantined(account, &first, &admin).unwrap();
    let inbox = mailbox(&store, account, "INBOX");
    let backup = store
        .mailbox_by_special_use(account, sealpost_storage::SpecialUse::Backup)
        .unwrap()
        .unwrap()
        .id;
    for folder in [inbox, backup] {
        let uid = store.messages(account, folder).unwrap()[0].uid;
        assert_eq!(store.read_message(account, folder, uid).unwrap(), raw);
    }
    // A hold keeps the rest past its expiry; released, expiry takes it.
    let case = store.open_hold("Case 3", "", &admin).unwrap();
    store
        .hold_add_custodian(case, account, None, None, &admin)
        .unwrap();
    assert_eq!(
        store.expire_quarantine(now + 2 * DAY_MS, &admin).unwrap(),
        0
    );
    assert!(store.delete_quarantined(account, &second, &admin).is_err());
    store.release_hold(case, &admin).unwrap();
    assert_eq!(
        store.expire_quarantine(now + 2 * DAY_MS, &admin).unwrap(),
        1
    );
    assert!(store.quarantined(account).unwrap().is_empty());
    // One body, shared by the INBOX and BACKUP copies; the expired one is gone.
    assert_eq!(store.body_count(account).unwrap(), 1);
}
