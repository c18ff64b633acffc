//! A process killed with SIGKILL during heavy appends loses no acknowledged message and
//! leaves no partial one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CHILD_DIR: &str = "SEALPOST_CRASH_CHILD_DIR";
const CHILD_THREADS: u64 = 4;
/// The child stops by itself after this many appends per thread, should nobody kill it.
const CHILD_APPENDS_PER_THREAD_MAX: u64 = 5_000;
/// The parent kills the child once it has seen this many acknowledgements.
const ACKS_BEFORE_KILL: usize = 300;
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

fn size_for(seed: u64) -> usize {
    // From 1 KB to about 300 KB, so that some bodies span several chunks.
    1_000 + (seed.wrapping_mul(2_654_435_761) % 300_000) as usize
}

/// Runs only as the child of the test below (it returns at once otherwise).
#[test]
fn crash_child_appender() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let fx_dir = PathBuf::from(dir);
    let config = sealpost_storage::StoreConfig::new(fx_dir.join("store"), DOMAIN);
    let master = sealpost_storage::MasterKey::load(&fx_dir.join("keys/master.key")).unwrap();
    let store = sealpost_storage::Store::open(config, master).unwrap();
    let account = store.find_account("alice").unwrap().unwrap().id;
    let inbox = mailbox(&store, account, "INBOX");
    let started = Instant::now();
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..CHILD_APPENDS_PER_THREAD_MAX {
                    if started.elapsed() > CHILD_DEADLINE {
                        return;
                    }
                    let seed = thread * 1_000_000 + i;
                    let uid = append(&store, account, inbox, &message(seed, size_for(seed)));
                    println!("ack {seed} {uid}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn sigkill_during_appends_loses_no_acknowledged_message() {
    let fx = Fixture::new();
    let store = fx.create();
    add_account(&store, "alice");
    drop(store);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_appender",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, fx.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("ack ") {
            let (seed, uid) = rest.split_once(' ').unwrap();
            acked.push((seed.parse::<u64>().unwrap(), uid.parse::<u32>().unwrap()));
        }
        if acked.len() >= ACKS_BEFORE_KILL || started.elapsed() > CHILD_DEADLINE {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    assert!(
        acked.len() >= ACKS_BEFORE_KILL,
        "only {} acknowledgements before the deadline",
        acked.len()
    );

    let store = fx.open();
    let account = store.find_account("alice").unwrap().unwrap().id;
    let inbox = mailbox(&store, account, "INBOX");
    for (seed, uid) in &acked {
        let expected = message(*seed, size_for(*seed));
        assert_eq!(
            store.read_message(account, inbox, *uid).unwrap(),
            expected,
            "acknowledged message {seed} (UID {uid})"
        );
    }
    // Whatever else made it to disk is whole: every message there is one the child wrote.
    let present = store.messages(account, inbox).unwrap();
    assert!(present.len() >= acked.len());
    for meta in &present {
        let raw = store.read_message(account, inbox, meta.uid).unwrap();
        let text = String::from_utf8_lossy(&raw[..200.min(raw.len())]).to_string();
        let seed: u64 = text
            .split("Subject: Message ")
            .nth(1)
            .and_then(|r| r.split("\r\n").next())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            raw,
            message(seed, size_for(seed)),
            "UID {} is whole",
            meta.uid
        );
        assert_eq!(raw.len() as u64, meta.size);
    }
    let status = store.mailbox(account, inbox).unwrap();
    assert_eq!(
        status.messages as usize,
        present.len(),
        "the counters match the messages"
    );
    assert!(status.uid_next > present.iter().map(|m| m.uid).max().unwrap_or(0));
    assert_eq!(store.audit_verify().unwrap().first_break, None);
}
