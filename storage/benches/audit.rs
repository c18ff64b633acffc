//! Searching a large audit log: 1,000,000 records (200 accounts, a dozen actions, mailboxes
//! and message numbers, seeded), written through the real store, then the console's searches,
//! each timed as the median of `RUNS`, against the same search done by opening every record
//! (the way before the index), in the same process. Goal: every indexed search under 200 ms.
//!
//! `cargo bench --profile dev -p sealpost-storage --bench audit -- [--check] [--records N]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use sealpost_storage::{Actor, AuditEvent, AuditSearch};

const RECORDS_DEFAULT: usize = 1_000_000;
const BATCH_RECORDS: usize = 2_000;
const RUNS: usize = 5;
const GOAL: Duration = Duration::from_millis(200);
const ACTIONS: [&str; 12] = [
    "message.read",
    "message.read",
    "message.read",
    "message.deliver",
    "message.deliver",
    "message.submit",
    "login.imap",
    "login.web",
    "message.move",
    "message.delete",
    "queue.deliver",
    "account.password",
];

fn event(i: usize) -> AuditEvent {
    // A spread that is the same every run.
    let mix = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let user = (mix >> 20) % 200;
    let action = ACTIONS[((mix >> 40) % ACTIONS.len() as u64) as usize];
    let actor = Actor {
        name: format!("user{user}@clinic.example"),
        peer: format!(
            "10.0.{}.{}:{}",
            (mix >> 8) % 8,
            (mix >> 12) % 250,
            40_000 + (mix >> 16) % 20_000
        ),
    };
    AuditEvent::new(
        &actor,
        action,
        format!(
            "mailbox:{} uids:{}",
            (mix >> 28) % 7 + 1,
            (mix >> 32) % 5_000
        ),
    )
    .detail(if action.starts_with("message") {
        "imap BODY[]"
    } else {
        "web"
    })
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let check = args.iter().any(|a| a == "--check");
    let records = args
        .iter()
        .position(|a| a == "--records")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(RECORDS_DEFAULT);
    let fx = common::Fixture::new();
    let store = fx.create();
    let started = Instant::now();
    let mut next = 0;
    let mut middle_ms = 0;
    while next < records {
        let end = (next + BATCH_RECORDS).min(records);
        store.audit_all((next..end).map(event).collect()).unwrap();
        if next <= records / 2 && records / 2 < end {
            std::thread::sleep(Duration::from_millis(2));
            middle_ms = i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        next = end;
    }
    let written = started.elapsed();
    println!(
        "audit benchmark: {records} records written in {:.1} s ({:.0} records/s), median of {RUNS} runs",
        written.as_secs_f64(),
        records as f64 / written.as_secs_f64()
    );
    let searches: Vec<(&str, AuditSearch)> = vec![
        ("newest 100, no filter", AuditSearch::default()),
        (
            "one account (about 1/200)",
            AuditSearch {
                actor: Some("user137@clinic.example".into()),
                ..AuditSearch::default()
            },
        ),
        (
            "a common action (about 1/4)",
            AuditSearch {
                action: Some("message.read".into()),
                ..AuditSearch::default()
            },
        ),
        (
            "account and action",
            AuditSearch {
                actor: Some("user137".into()),
                action: Some("message.delete".into()),
                ..AuditSearch::default()
            },
        ),
        (
            "account, object words",
            AuditSearch {
                actor: Some("user42".into()),
                object: Some("mailbox:3".into()),
                ..AuditSearch::default()
            },
        ),
        (
            "a word anywhere (an address)",
            AuditSearch {
                text: Some("10.0.3.17".into()),
                ..AuditSearch::default()
            },
        ),
        (
            "the newer half, by time",
            AuditSearch {
                since_ms: Some(middle_ms),
                ..AuditSearch::default()
            },
        ),
        (
            "a common action, a page deep in the log",
            AuditSearch {
                action: Some("message.read".into()),
                older_than: Some(records as u64 / 3),
                ..AuditSearch::default()
            },
        ),
    ];
    println!("| search | found | indexed, ms | opening every record, ms | ratio |");
    println!("|---|---:|---:|---:|---:|");
    let mut failed = false;
    for (name, search) in searches {
        let search = AuditSearch {
            limit: 100,
            ..search
        };
        let mut times = Vec::new();
        let mut found = String::new();
        for _ in 0..RUNS {
            let start = Instant::now();
            let page = store.audit_search(&search).unwrap();
            times.push(start.elapsed());
            found = format!(
                "{}{}",
                page.matched,
                if page.matched_exact { "" } else { "+" }
            );
        }
        let indexed = median(times);
        // The baseline: open every record and keep the newest matches, as the console did.
        let start = Instant::now();
        let mut kept = 0usize;
        let needle = search
            .actor
            .clone()
            .or(search.action.clone())
            .or(search.text.clone())
            .unwrap_or_default();
        store
            .audit_records(search.since_ms.unwrap_or(i64::MIN), &mut |record| {
                let e = &record.event;
                if needle.is_empty()
                    || e.actor.contains(&needle)
                    || e.action.contains(&needle)
                    || e.peer.contains(&needle)
                {
                    kept += 1;
                }
                Ok(())
            })
            .unwrap();
        let scan = start.elapsed();
        failed |= indexed >= GOAL;
        println!(
            "| {name} | {found} | {:.1} | {:.0} | {:.0}x |",
            indexed.as_secs_f64() * 1000.0,
            scan.as_secs_f64() * 1000.0,
            scan.as_secs_f64() / indexed.as_secs_f64().max(1e-9)
        );
        std::hint::black_box(kept);
    }
    if check && failed {
        eprintln!("an indexed search took {} ms or more", GOAL.as_millis());
        std::process::exit(1);
    }
}
