//! The content rules against a table of samples that must and must not match. Each rule's
//! false positives and false negatives are printed (run with --nocapture to see the table);
//! the test fails on any.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sealpost_policy::{
    Action, Content, ContentRule, Detector, DomainRule, Policy, PolicyConfig, Route,
};

/// (rule, text, should match)
const SAMPLES: &[(&str, &str, bool)] = &[
    ("ssn", "Patient SSN 123-45-6789 on file.", true),
    ("ssn", "ssn:078-05-1120", true),
    ("ssn", "Call 555-12-3456 for the clinic.", true),
    ("ssn", "Order 000-12-3456 shipped.", false),
    ("ssn", "Ticket 666-12-3456 closed.", false),
    ("ssn", "Part 912-34-5678 in stock.", false),
    ("ssn", "Serial 123-00-4567 ok", false),
    ("ssn", "Phone 555-123-4567", false),
    ("ssn", "Dates 2024-01-15 and 12-31-2024", false),
    ("mrn", "MRN: 00482913 admitted today", true),
    ("mrn", "medical record number 1234567", true),
    ("mrn", "mrn#AB123456", true),
    ("mrn", "The MRN field is empty.", false),
    ("mrn", "Room 12345678 is booked.", false),
    ("date-of-birth", "DOB: 03/14/1962", true),
    ("date-of-birth", "Jane Doe, date of birth 1962-03-14", true),
    ("date-of-birth", "born on 14 March 1962 in Leeds", true),
    ("date-of-birth", "d.o.b. 14.03.62", true),
    ("date-of-birth", "Meeting on 03/14/2026 at noon.", false),
    ("date-of-birth", "The project was born in 2019.", false),
    ("icd-10", "Diagnosis: E11.9 type 2 diabetes", true),
    ("icd-10", "assessment J45.909, stable", true),
    ("icd-10", "dx I10", true),
    ("icd-10", "ICD-10 F32", true),
    ("icd-10", "Flight B12 leaves at 10.30", false),
    ("icd-10", "Version 3.2.1 released", false),
    ("icd-10", "Room A10 on floor 2", false),
    ("secure-tag", "[SECURE] lab results", true),
    ("secure-tag", "Results [secure]", true),
    ("secure-tag", "secure the door", false),
    ("keywords", "The biopsy came back positive.", true),
    ("keywords", "HIV test scheduled", true),
    ("keywords", "Oncology ward meeting", true),
    ("keywords", "Lunch at the archive", false),
    ("keywords", "shivering cold", false),
];

fn policy() -> Policy {
    let mut content = PolicyConfig::default_content_rules();
    content.push(ContentRule {
        name: "keywords".into(),
        enabled: true,
        proof_required: false,
        detector: Detector::Keywords {
            words: vec!["biopsy".into(), "HIV".into(), "oncology".into()],
        },
        action: Action::Block,
    });
    Policy::new(PolicyConfig {
        content,
        ..PolicyConfig::default()
    })
    .unwrap()
}

#[test]
fn content_rules_on_the_sample_table_have_no_false_positives_or_negatives() {
    let policy = policy();
    let mut rows = std::collections::BTreeMap::<&str, (usize, usize, Vec<String>)>::new();
    for (rule, text, expected) in SAMPLES {
        // Secure tags are read from the subject; the rest from the body text.
        let content = if *rule == "secure-tag" {
            Content {
                subject: text,
                ..Content::default()
            }
        } else {
            Content {
                subject: "a message",
                text,
                ..Content::default()
            }
        };
        let matched = policy.scan(&content).iter().any(|f| f.rule == *rule);
        let row = rows.entry(rule).or_default();
        row.0 += 1;
        if matched != *expected {
            row.1 += 1;
            let kind = if matched {
                "false positive"
            } else {
                "false negative"
            };
            row.2.push(format!("{kind}: {text:?}"));
        }
    }
    println!("{:<14} {:>7} {:>7}", "rule", "samples", "wrong");
    for (rule, (samples, wrong, details)) in &rows {
        println!("{rule:<14} {samples:>7} {wrong:>7}");
        for detail in details {
            println!("    {detail}");
        }
    }
    let wrong: Vec<String> = rows.values().flat_map(|r| r.2.clone()).collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn attachment_names_are_scanned() {
    let policy = policy();
    let findings = policy.scan(&Content {
        subject: "files",
        text: "see attached",
        attachment_names: vec!["oncology-referral.pdf"],
    });
    assert!(findings
        .iter()
        .any(|f| f.rule == "keywords" && f.action == Action::Block));
}

#[test]
fn admin_rules_route_by_address_then_domain_and_content_forces_the_portal() {
    let mut config = PolicyConfig {
        content: PolicyConfig::default_content_rules(),
        ..PolicyConfig::default()
    };
    config
        .domains
        .insert("partner.example".into(), DomainRule::TlsRequired);
    config
        .domains
        .insert("lawyer@partner.example".into(), DomainRule::AlwaysPortal);
    config
        .domains
        .insert("webmail.example".into(), DomainRule::AlwaysPortal);
    config
        .barred_accounts
        .insert("intern@clinic.example".into());
    let policy = Policy::new(config).unwrap();
    let phi = policy.scan(&Content {
        subject: "x",
        text: "SSN 123-45-6789",
        ..Content::default()
    });
    assert_eq!(phi.len(), 1);
    assert_eq!(policy.route("a@partner.example", &phi), Route::TlsOrPortal);
    assert!(matches!(
        policy.route("Lawyer@Partner.example", &[]),
        Route::Portal(_)
    ));
    assert!(matches!(
        policy.route("a@webmail.example", &[]),
        Route::Portal(_)
    ));
    assert!(
        matches!(policy.route("a@other.example", &phi), Route::Portal(why) if why.contains("ssn"))
    );
    assert_eq!(policy.route("a@other.example", &[]), Route::TlsOrPortal);
    assert!(!policy.may_send_outside("Intern@clinic.example"));
    assert!(policy.may_send_outside("doc@clinic.example"));
    assert!(Policy::new(PolicyConfig {
        content: vec![ContentRule {
            name: "bad".into(),
            enabled: true,
            proof_required: false,
            detector: Detector::Mrn {
                patterns: vec!["(".into()]
            },
            action: Action::Portal
        }],
        ..PolicyConfig::default()
    })
    .is_err());
}

#[test]
fn a_disabled_content_rule_is_kept_but_matches_nothing_and_bad_settings_are_refused() {
    let text = "Patient SSN 123-45-6789 on file.";
    let scan = |config: PolicyConfig| {
        Policy::new(config).unwrap().scan(&Content {
            subject: "",
            text,
            attachment_names: Vec::new(),
        })
    };
    let on = PolicyConfig::default();
    assert!(scan(on.clone()).iter().any(|f| f.rule == "ssn"));
    let mut off = on.clone();
    for rule in off.content.iter_mut().filter(|r| r.name == "ssn") {
        rule.enabled = false;
    }
    assert!(!scan(off.clone()).iter().any(|f| f.rule == "ssn"));
    // The rule stays in the policy, written back as disabled.
    let written = toml::to_string(&off).unwrap();
    let read: PolicyConfig = toml::from_str(&written).unwrap();
    assert_eq!(read, off);
    assert!(written.contains("enabled = false"), "{written}");
    // Settings outside their bounds are refused with their name.
    let mut short = on.clone();
    short.sign_in.session_idle_ms = 5;
    assert!(Policy::new(short)
        .err()
        .unwrap()
        .contains("session_idle_ms"));
    let mut none = on.clone();
    none.sign_in.failures_per_account_max = 0;
    assert!(Policy::new(none)
        .err()
        .unwrap()
        .contains("failures_per_account_max"));
    let mut forever = on;
    forever.portal.pickup_ttl_ms = 0;
    assert!(Policy::new(forever)
        .err()
        .unwrap()
        .contains("pickup_ttl_ms"));
}
