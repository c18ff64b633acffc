#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use sealpost_storage::{
    AccountId, Actor, Flags, InternalDate, MailboxId, MasterKey, NewAccount, NewMessage, Role,
    Store, StoreConfig,
};

pub const DOMAIN: &str = "clinic.example";

/// A data folder as `sealpost init` lays it out: `keys/master.key` beside `store/`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("keys/master.key")
    }

    pub fn config(&self) -> StoreConfig {
        StoreConfig::new(self.store_path(), DOMAIN)
    }

    pub fn create(&self) -> Store {
        let master = MasterKey::create_file(&self.key_path()).unwrap();
        Store::create(self.config(), master).unwrap()
    }

    pub fn open(&self) -> Store {
        Store::open(self.config(), MasterKey::load(&self.key_path()).unwrap()).unwrap()
    }
}

pub fn add_account(store: &Store, address: &str) -> AccountId {
    store
        .create_account(
            &NewAccount {
                address,
                display_name: "Test User",
                role: Role::Staff,
                password: Some("correct horse battery"),
            },
            &Actor::cli(),
        )
        .unwrap()
}

pub fn mailbox(store: &Store, account: AccountId, name: &str) -> MailboxId {
    store
        .mailbox_by_name(account, name)
        .unwrap()
        .unwrap_or_else(|| panic!("no mailbox {name}"))
        .id
}

pub fn append(store: &Store, account: AccountId, mailbox: MailboxId, raw: &[u8]) -> u32 {
    store
        .append(
            account,
            mailbox,
            &NewMessage {
                raw,
                flags: Flags::new(),
                internal_date: InternalDate::now(),
                summary: b"",
                search_text: b"",
            },
        )
        .unwrap()
        .uid
}

/// A plausible message of about `size` bytes, the same for the same seed.
pub fn message(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let words = [
        "patient",
        "clinic",
        "review",
        "results",
        "appointment",
        "the",
        "and",
        "of",
        "dose",
        "follow-up",
    ];
    let mut out = format!(
        "From: Doctor {seed} <doctor{seed}@clinic.example>\r\nTo: nurse@clinic.example\r\n\
         Subject: Message {seed}\r\nMessage-ID: <{seed}@clinic.example>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    while out.len() < size {
        for _ in 0..12 {
            out.extend_from_slice(words[rng.gen_range(0..words.len())].as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(format!("{}\r\n", rng.gen::<u32>()).as_bytes());
    }
    out
}

/// Random bytes that do not compress, wrapped as a message.
pub fn incompressible_message(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = b"Subject: scan\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    out.extend((0..size).map(|_| rng.gen::<u8>()));
    out
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Total bytes of every file under `dir`.
pub fn bytes_under(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

/// The files under `dir` that contain `needle`, ignoring ASCII case.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let needle = needle.to_ascii_lowercase();
    files_under(dir)
        .into_iter()
        .filter(|f| {
            let bytes = std::fs::read(f).unwrap().to_ascii_lowercase();
            bytes.windows(needle.len()).any(|w| w == needle.as_slice())
        })
        .collect()
}
