//! What a new message costs to index (issue #21): the three parses the store's callers made
//! before `Indexed` (`Summary::of`, which parses the structure and the header, and
//! `search_text`, a full mail-parser parse) against `Indexed::of` (the structure and one full
//! parse), each with the bytes the store keeps. 500 messages of 2–200 kB (the harness's
//! APPEND sizes: text with a multipart alternative every third), alternating rounds in one
//! process, medians. `cargo bench --release -p sealpost-mime --bench indexed`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use sealpost_mime::{search_text, Indexed, Summary};

const MESSAGES: u64 = 500;
const ROUNDS: usize = 9;
const SIZE_MIN_BYTES: u64 = 2_000;
const SIZE_MAX_BYTES: u64 = 200_000;

fn message(seed: u64, size: u64) -> Vec<u8> {
    let words = [
        "patient",
        "clinic",
        "review",
        "results",
        "appointment",
        "the",
        "and",
        "of",
    ];
    let mut text = String::new();
    let mut n = seed;
    while (text.len() as u64) < size {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push_str(words[(n >> 33) as usize % words.len()]);
        text.push(if n.is_multiple_of(13) { '\n' } else { ' ' });
    }
    let head = format!(
        "From: Doctor {seed} <doc{seed}@clinic.example>\r\nTo: nurse@clinic.example\r\n\
         Subject: =?utf-8?q?r=C3=A9sultats_{seed}?=\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n\
         Message-ID: <{seed}@clinic.example>\r\nMIME-Version: 1.0\r\n"
    );
    if seed.is_multiple_of(3) {
        format!(
            "{head}Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n--b\r\n\
             Content-Type: text/html; charset=utf-8\r\n\r\n<p>{text}</p>\r\n--b--\r\n"
        )
    } else {
        format!("{head}Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n")
    }
    .into_bytes()
}

fn before(raw: &[u8]) -> usize {
    let summary = Summary::of(raw).to_bytes();
    let text = search_text(raw).lowercased().to_bytes();
    summary.len() + text.len()
}

fn after(raw: &[u8]) -> usize {
    let indexed = Indexed::of(raw);
    indexed.summary_bytes().len() + indexed.search_bytes().len()
}

fn time(corpus: &[Vec<u8>], index: fn(&[u8]) -> usize) -> Duration {
    let started = Instant::now();
    for raw in corpus {
        black_box(index(black_box(raw)));
    }
    started.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let corpus: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|i| {
            let spread = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            message(
                i,
                SIZE_MIN_BYTES + spread % (SIZE_MAX_BYTES - SIZE_MIN_BYTES),
            )
        })
        .collect();
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    // The same bytes kept either way: the comparison is of the work, not of its result.
    for raw in &corpus {
        assert_eq!(before(raw), after(raw));
    }
    let (mut old, mut new) = (Vec::new(), Vec::new());
    // Which goes first alternates too: the allocator's state is part of the cost.
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            old.push(time(&corpus, before));
            new.push(time(&corpus, after));
        } else {
            new.push(time(&corpus, after));
            old.push(time(&corpus, before));
        }
    }
    let (old, new) = (median(old), median(new));
    println!(
        "indexing {MESSAGES} messages ({:.1} MB), medians of {ROUNDS} alternating rounds",
        bytes as f64 / 1e6
    );
    println!(
        "  before (Summary::of + search_text): {:>8.1} ms",
        old.as_secs_f64() * 1e3
    );
    println!(
        "  after  (Indexed::of):               {:>8.1} ms",
        new.as_secs_f64() * 1e3
    );
    println!(
        "  ratio before / after: {:.2} (> 1: Indexed is faster)",
        old.as_secs_f64() / new.as_secs_f64()
    );
}
