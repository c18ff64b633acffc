//! What encryption at rest costs: append and full-body read over a mixed corpus (2 KB to
//! 200 KB, seeded), on the real store with encryption on, and on the same store with the seal
//! switched off, in one process. Rounds alternate the two so that disk and cache drift hit both.
//!
//! `cargo bench -p sealpost-storage --features bench-unencrypted --bench store -- [--check]`
//! prints the table; with `--check` it exits 1 when encryption costs 25% or more of a rate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use sealpost_storage::{Flags, InternalDate, MasterKey, NewMessage, Store, StoreConfig};

const MESSAGES: u64 = 600;
const ROUNDS: usize = 3;
const READ_PASSES: usize = 3;
const SIZE_MIN_BYTES: u64 = 2 * 1024;
const SIZE_MAX_BYTES: u64 = 200 * 1024;
const COST_GOAL: f64 = 0.25;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Encrypted,
    Plaintext,
}

struct Timing {
    append: Duration,
    read: Duration,
}

fn corpus() -> Vec<Vec<u8>> {
    (0..MESSAGES)
        .map(|i| {
            // A spread of sizes, the same every run.
            let spread = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let size = SIZE_MIN_BYTES + spread % (SIZE_MAX_BYTES - SIZE_MIN_BYTES);
            common::message(i, size as usize)
        })
        .collect()
}

fn run(mode: Mode, corpus: &[Vec<u8>]) -> Timing {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::new(dir.path().join("store"), common::DOMAIN);
    let store = match mode {
        Mode::Encrypted => Store::create(
            config,
            MasterKey::create_file(&dir.path().join("keys/master.key")).unwrap(),
        )
        .unwrap(),
        Mode::Plaintext => Store::create_unencrypted_for_bench(config).unwrap(),
    };
    let account = common::add_account(&store, "bench");
    let inbox = common::mailbox(&store, account, "INBOX");
    let started = Instant::now();
    let mut uids = Vec::with_capacity(corpus.len());
    for raw in corpus {
        let message = NewMessage {
            raw,
            flags: Flags::new(),
            internal_date: InternalDate::now(),
            summary: b"",
            search_text: b"",
        };
        uids.push(store.append(account, inbox, &message).unwrap().uid);
    }
    let append = started.elapsed();
    let started = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..READ_PASSES {
        for uid in &uids {
            bytes += store.read_message(account, inbox, *uid).unwrap().len();
        }
    }
    let read = started.elapsed() / READ_PASSES as u32;
    assert_eq!(
        bytes,
        READ_PASSES * corpus.iter().map(Vec::len).sum::<usize>()
    );
    Timing { append, read }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let corpus = corpus();
    let total_mb = corpus.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
    let mut timings: Vec<(Mode, Timing)> = Vec::new();
    for _ in 0..ROUNDS {
        for mode in [Mode::Encrypted, Mode::Plaintext] {
            timings.push((mode, run(mode, &corpus)));
        }
    }
    let pick = |mode: Mode, f: fn(&Timing) -> Duration| {
        median(
            timings
                .iter()
                .filter(|(m, _)| *m == mode)
                .map(|(_, t)| f(t))
                .collect(),
        )
    };
    let rates = |append: Duration, read: Duration| {
        let n = corpus.len() as f64;
        (
            n / append.as_secs_f64(),
            total_mb / append.as_secs_f64(),
            n / read.as_secs_f64(),
            total_mb / read.as_secs_f64(),
        )
    };
    let encrypted = rates(
        pick(Mode::Encrypted, |t| t.append),
        pick(Mode::Encrypted, |t| t.read),
    );
    let plaintext = rates(
        pick(Mode::Plaintext, |t| t.append),
        pick(Mode::Plaintext, |t| t.read),
    );
    println!(
        "store benchmark: {} messages, {total_mb:.1} MB, sizes 2-200 KB, median of {ROUNDS} rounds",
        corpus.len()
    );
    println!("| store       | append msg/s | append MB/s | read msg/s | read MB/s |");
    println!("|-------------|-------------:|------------:|-----------:|----------:|");
    for (name, r) in [("encrypted", encrypted), ("unencrypted", plaintext)] {
        println!(
            "| {name:<11} | {:>12.0} | {:>11.1} | {:>10.0} | {:>9.1} |",
            r.0, r.1, r.2, r.3
        );
    }
    let append_cost = 1.0 - encrypted.0 / plaintext.0;
    let read_cost = 1.0 - encrypted.2 / plaintext.2;
    println!(
        "encrypted/unencrypted: append {:.2}, read {:.2}; encryption costs {:.1}% of the append rate and {:.1}% of the read rate (goal: under {:.0}%)",
        encrypted.0 / plaintext.0,
        encrypted.2 / plaintext.2,
        append_cost * 100.0,
        read_cost * 100.0,
        COST_GOAL * 100.0
    );
    if check && (append_cost >= COST_GOAL || read_cost >= COST_GOAL) {
        eprintln!("FAILED: encryption costs {COST_GOAL:.0}% or more of a rate");
        std::process::exit(1);
    }
}
