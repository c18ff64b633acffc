//! IMAP amplification against the real binary (exhaustion): one user sends, on
//! four connections at once, commands whose cost used to follow what the client wrote
//! instead of the mailbox (huge overlapping sequence and UID sets, a huge QRESYNC known-UID
//! set, CHANGEDSINCE/VANISHED over one, a megabyte LIST pattern of wildcards) and commands
//! proportional to message size (BODYSTRUCTURE, BINARY, sections, SEARCH TEXT over a folder
//! of large messages, one section asked for 200 times in one FETCH). Another user's NOOPs
//! must each answer within a second, and the server must grow by less than
//! RSS_GROWTH_MIB_MAX. The client is `tests/scripts/imap_abuse.py`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::DataDir;

const PASSWORD: &str = "abuse-test-password-1";
/// How long the attack runs, in seconds.
const ATTACK_S: u32 = 20;
/// The slowest NOOP of the other user the test accepts, in seconds.
const NOOP_S_MAX: f64 = 1.0;
/// How much the server may grow over its size after the mailboxes were filled (VmHWM, the
/// peak, against VmRSS before the attack), in MiB: four connections each hold at most one
/// batch of the large messages and what is written from it.
const RSS_GROWTH_MIB_MAX: u64 = 300;
/// The driver stops the run past this growth (today's code grew without bound).
const ABORT_RSS_GROWTH_MIB: u64 = 600;

/// The process id of the `sealpost serve` running on `data` (found in /proc: the test's
/// server helper keeps its child to itself).
fn server_pid(data: &Path) -> u32 {
    let wanted = data.to_str().unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.iter().any(|a| a == "serve") && args.iter().any(|a| a == wanted) {
            return pid;
        }
    }
    panic!("no sealpost serve process for {wanted}");
}

#[test]
fn another_users_noops_answer_within_a_second_and_memory_stays_bounded_under_imap_amplification() {
    let data = DataDir::init_with("abuse.test", &["--hostname", "localhost"]);
    data.add_accounts(&["attacker@abuse.test", "victim@abuse.test"], PASSWORD);
    let mut server = data.serve();
    let pid = server_pid(&data.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scripts/imap_abuse.py");
    let output = Command::new("/usr/bin/python3")
        .arg(&script)
        .env("PORT", (data.port_base + 993).to_string())
        .env("CAFILE", data.path().join("tls/cert.pem"))
        .env("PASS", PASSWORD)
        .env("ATTACKER", "attacker@abuse.test")
        .env("VICTIM", "victim@abuse.test")
        .env("PID", pid.to_string())
        .env("ATTACK_S", ATTACK_S.to_string())
        .env("ABORT_RSS_GROWTH_MIB", ABORT_RSS_GROWTH_MIB.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "the driver failed: {stderr}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON from the driver: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let shown = serde_json::to_string_pretty(&result).unwrap();
    println!("{shown}");
    let kib = |name: &str| result[name].as_u64().unwrap_or(0);
    assert_eq!(
        result["aborted"], false,
        "the server grew past {ABORT_RSS_GROWTH_MIB} MiB (or died) under the attack: {shown}"
    );
    let growth_mib = kib("hwm_kib").saturating_sub(kib("baseline_rss_kib")) / 1024;
    assert!(
        growth_mib < RSS_GROWTH_MIB_MAX,
        "the server's peak grew by {growth_mib} MiB (bound {RSS_GROWTH_MIB_MAX} MiB): {shown}"
    );
    let victim = &result["reports"]["victim"];
    assert!(
        victim.get("error").is_none(),
        "the other user's session failed: {shown}"
    );
    let slowest = victim["slowest_noop_s"].as_f64().unwrap();
    assert!(
        slowest < NOOP_S_MAX,
        "the other user's slowest NOOP took {slowest} s under the attack: {shown}"
    );
    // A NOOP every 100 ms for the attack's length, less what the attack slowed down.
    let noops = victim["noops"].as_u64().unwrap();
    assert!(
        noops >= u64::from(ATTACK_S) * 5,
        "only {noops} NOOPs answered: {shown}"
    );
    assert_eq!(
        result["attackers_stuck"], 0,
        "an attacker's command never finished: {shown}"
    );
    for connection in ["sets", "sets2", "qresync", "bodies"] {
        let report = result["reports"][connection].as_object().unwrap();
        assert!(
            report.get("errors").is_none(),
            "{connection} failed: {shown}"
        );
        assert!(
            report.len() >= 3,
            "{connection} ran too few kinds of command: {shown}"
        );
        for (name, entry) in report {
            let status = entry["status"].as_str().unwrap();
            // A valid command past an implementation limit: NO (RFC 9051 section 7.1.2), for
            // the long LIST and LSUB patterns and the section asked 200 times.
            let limited = ["LIST", "LSUB", "FETCH 1 (BODY.PEEK[2]"];
            let expected = if limited.iter().any(|l| name.starts_with(l)) {
                "NO [LIMIT]"
            } else {
                "OK"
            };
            assert!(
                status.starts_with(expected),
                "{connection}: {name} answered {status:?}: {shown}"
            );
        }
    }
    // The answers were right, not just fast: the long pattern is refused with its bound.
    let qresync = &result["reports"]["qresync"];
    let refusal = qresync["LIST \"\" "]["status"].as_str().unwrap();
    assert!(refusal.contains("1000 bytes"), "{refusal}");
    assert_eq!(
        server.terminate(Duration::from_secs(30)),
        Some(true),
        "{:?}",
        server.seen
    );
}
