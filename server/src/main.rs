//! `sealpost`: the one binary. Subcommands set up a data folder, manage accounts and keys,
//! check the audit log, and serve.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod acme;
mod backup;
mod cli;
mod config;
mod control;
mod dkim;
mod doctor;
mod files;
mod import;
mod import_imap;
mod init;
mod key;
mod listener;
mod metrics;
mod serve;
mod tcp;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// mimalloc, not glibc's allocator: each login's argon2 hash takes 19 MiB and frees it, and
/// under glibc the sessions' small allocations then pinned those regions, so the heap grew
/// about 1 MiB per concurrent session (measured by tests/scripts/idle_bench.py). mimalloc
/// gives large blocks back to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sealpost",
    version,
    about = "Sealpost: a secure mail host for healthcare"
)]
pub(crate) struct Args {
    /// The data folder (`sealpost init` makes it; `demo` defaults to /var/tmp/sealpost-demo).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Make a data folder: configuration, master key, self-signed certificate, empty store.
    Init(init::InitArgs),
    /// Make a demo data folder if there is none (with a demo account), print how to log in, and serve.
    Demo(init::DemoArgs),
    /// Run every configured service until SIGTERM or SIGINT.
    Serve,
    #[command(flatten)]
    Admin(cli::Admin),
    /// Manage the master key (the server must not be running).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Check an install and say what to fix: configuration, keys and their modes, the
    /// certificate, DNS records, ports, disk space, the clock. Exits 1 when anything fails.
    Doctor,
    /// Restore a backup into an empty folder, check it whole, and open its store.
    Restore(backup::RestoreArgs),
    /// Copy mail from files into an account (the server must not be running).
    #[command(subcommand)]
    Import(import::ImportCommand),
}

pub(crate) use sealpost_storage::now_ms;

/// Where the demo keeps its data unless `--data` says otherwise.
const DEMO_DATA: &str = "/var/tmp/sealpost-demo";

fn run(command: Command, data: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let required = || data.as_deref().context("--data DIR is required");
    match command {
        Command::Demo(args) => init::run_demo(
            &args,
            data.as_deref().unwrap_or(std::path::Path::new(DEMO_DATA)),
        ),
        Command::Admin(cli::Admin::Backup(cli::BackupArgs {
            check: Some(cli::BackupCheck::Verify { file, identity }),
            ..
        })) => backup::verify(&file, &identity),
        Command::Init(args) => init::run_init(&args, required()?).map(|_| ExitCode::SUCCESS),
        Command::Serve => serve::run(required()?),
        Command::Restore(args) => backup::restore(&args, required()?),
        Command::Doctor => doctor::run(required()?),
        Command::Admin(command) => cli::admin(command, required()?),
        Command::Key(command) => key::key(command, required()?),
        Command::Import(command) => import::import(command, required()?),
    }
}

fn main() -> ExitCode {
    // mimalloc asks for transparent huge pages for its arenas; each fresh 2 MiB page is then
    // zeroed whole on first touch, and as mimalloc returns freed memory and takes it again,
    // that zeroing was a quarter of the CPU of an SMTP delivery burst (perf, bench-smtp).
    // Small pages cost little for a mail server's many short-lived buffers.
    // Where the kernel refuses (not Linux, or seccomp), huge pages stay: slower, not wrong.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let Args { data, command } = Args::parse();
    let result = run(command, data);
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("sealpost: {error:#}");
            ExitCode::FAILURE
        }
    }
}
