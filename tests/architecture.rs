//! The crate graph as ARCHITECTURE.md draws it: every dependency between Sealpost's crates
//! points down, from the binary to the web, the protocols, identity and policy, the store,
//! and the MIME, connection and shared-type crates at the bottom. Two crates of one layer never depend on
//! each other (IMAP and SMTP share nothing but what lies below them). Read from `cargo
//! metadata`, so a new edge fails here before it tangles the middle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;

/// Each crate's layer: a crate may depend only on crates of a lower layer.
const LAYERS: [(&str, u32); 12] = [
    ("sealpost-types", 0),
    ("sealpost-mime", 0),
    ("sealpost-net", 0),
    ("sealpost-testkit", 0),
    ("sealpost-storage", 1),
    ("sealpost-auth", 2),
    ("sealpost-policy", 2),
    ("sealpost-imap", 3),
    ("sealpost-smtp", 3),
    ("sealpost-console", 3),
    ("sealpost-webmail", 4),
    ("sealpost", 5),
];

/// Edges that point down but must not exist: identity builds no mail, the policy reads rules
/// without the store, and neither protocol crate reaches into the other.
const FORBIDDEN: [(&str, &str); 4] = [
    ("sealpost-auth", "sealpost-mime"),
    ("sealpost-policy", "sealpost-storage"),
    ("sealpost-smtp", "sealpost-imap"),
    ("sealpost-imap", "sealpost-smtp"),
];

#[test]
fn dependencies_between_sealpost_crates_point_down_only() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let layers: BTreeMap<&str, u32> = LAYERS.into_iter().collect();
    let mut edges = Vec::new();
    let mut wrong = Vec::new();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let Some(&layer) = layers.get(name) else {
            panic!("{name} has no layer in LAYERS: give it one (and a place in ARCHITECTURE.md)");
        };
        for dependency in package["dependencies"].as_array().unwrap() {
            let target = dependency["name"].as_str().unwrap();
            if !target.starts_with("sealpost") {
                continue;
            }
            // Tests count too (a test of one protocol crate does not reach into the other);
            // only the test helpers may serve any crate's tests.
            let dev = dependency["kind"].as_str() == Some("dev");
            let below = layers.get(target).copied().unwrap_or(u32::MAX);
            edges.push(format!("{name} -> {target}"));
            if FORBIDDEN.contains(&(name, target)) {
                wrong.push(format!("{name} -> {target} (forbidden)"));
            } else if below >= layer && !(dev && target == "sealpost-testkit") {
                wrong.push(format!(
                    "{name} (layer {layer}) -> {target} (layer {below})"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that do not point down: {wrong:?}"
    );
    // The graph is what it should be, and the check saw it (a metadata that lost the
    // dependencies would pass the loop above).
    assert!(
        edges.contains(&"sealpost-imap -> sealpost-net".to_string()),
        "{edges:?}"
    );
    assert!(
        edges.contains(&"sealpost-smtp -> sealpost-auth".to_string()),
        "{edges:?}"
    );
    assert!(
        !edges.iter().any(|e| e == "sealpost-smtp -> sealpost-imap"),
        "{edges:?}"
    );
}
