//! The message an account gets in its INBOX (and BACKUP) when it is signed in to from a
//! network it has not used before: when, from where, how, and what to do if it was not them.
//! The web's sign-in writes it here; the server hands the same function to the mail-login
//! gate (`MailLogins::new`), so that the auth crate builds no mail.

use sealpost_storage::{Account, Actor, AuditEvent, Store};
use time::format_description::well_known::Rfc2822;

/// Writes the notice into the account's INBOX and BACKUP, with the audit record of the new
/// network, in one write.
pub fn new_network(
    store: &Store,
    account: &Account,
    peer: &str,
    method: &str,
    hostname: &str,
) -> sealpost_storage::Result<()> {
    let network = sealpost_auth::credentials::network_of(peer);
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".into());
    let id: String = (0..12)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let domain = account
        .address
        .rsplit_once('@')
        .map_or(hostname, |(_, d)| d);
    let raw = format!(
        "From: Sealpost <postmaster@{domain}>\r\nTo: <{to}>\r\nSubject: New sign-in to your account\r\n\
         Date: {date}\r\nMessage-ID: <{id}@{hostname}>\r\nAuto-Submitted: auto-generated\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Your account {to} was signed in to from a network it has not used before.\r\n\r\n\
         When:    {date}\r\nNetwork: {network} (address {peer})\r\nHow:     {method}\r\n\r\n\
         If this was you, there is nothing to do.\r\n\r\n\
         If it was not you: sign in on the web, open Account security, sign out everywhere,\r\n\
         revoke app passwords you do not recognise, and change your password. Then tell your\r\n\
         administrator.\r\n",
        to = account.address,
    );
    let raw = raw.as_bytes();
    let index = sealpost_mime::Indexed::of(raw);
    let (summary, search_text) = (index.summary_bytes(), index.search_bytes());
    let message = sealpost_storage::NewMessage {
        raw,
        flags: sealpost_storage::Flags::new(),
        internal_date: sealpost_storage::InternalDate::now(),
        summary: &summary,
        search_text: &search_text,
    };
    let target = sealpost_storage::DeliveryTarget {
        account: account.id,
        placement: sealpost_storage::Placement::Notice,
        outbound: None,
    };
    let actor = Actor {
        name: account.address.clone(),
        peer: peer.to_string(),
    };
    let events = |_: &[sealpost_storage::Delivered]| {
        vec![AuditEvent::new(
            &actor,
            "auth.new_network",
            format!("account:{}", account.id.0),
        )
        .detail(format!("{network} by {method}; notice in INBOX"))]
    };
    store.deliver_all(&[target], &message, &events)?;
    Ok(())
}
