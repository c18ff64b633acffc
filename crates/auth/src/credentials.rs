//! An account's credential record (kept by `Store::update_credentials`, sealed under the
//! account's keys): its second factors, app passwords, known networks and recent sign-ins;
//! and the decisions made from it: may the account password open a mail client session, does
//! an app password match, is this network new.

use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{Passkey, Uuid};

use sealpost_storage::{Account, AccountId, Actor, AuditEvent, Role, Store};

use crate::secrets;
use sealpost_types::SignInSettings;

/// Most passkeys per account.
pub const PASSKEYS_MAX: usize = 16;
/// Most app passwords per account.
pub const APP_PASSWORDS_MAX: usize = 32;
/// Longest name a user gives a passkey or an app password, in characters.
pub const CREDENTIAL_NAME_CHARS_MAX: usize = 64;
/// Networks remembered per account (a new one is announced); the least recently used go.
pub const NETWORKS_KEPT_MAX: usize = 64;
/// Recent sign-ins kept per account, for the account security page.
pub const SIGN_INS_KEPT_MAX: usize = 20;

/// Whether `account` must use a passkey on the web: admins and auditors always, staff when
/// the settings say so.
pub fn passkey_required(settings: &SignInSettings, account: &Account) -> bool {
    matches!(account.role, Role::Admin | Role::Auditor) || settings.passkey_required_for_staff
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    pub totp: Option<TotpFactor>,
    /// The account's passkey user handle (random), made with its first passkey.
    #[serde(default)]
    pub user_handle: Option<Uuid>,
    #[serde(default)]
    pub passkeys: Vec<PasskeyFactor>,
    /// SHA-256 of each unused recovery code.
    #[serde(default)]
    pub recovery: Vec<[u8; 32]>,
    #[serde(default)]
    pub app_passwords: Vec<AppPassword>,
    #[serde(default)]
    pub networks: Vec<KnownNetwork>,
    #[serde(default)]
    pub sign_ins: Vec<SignIn>,
    /// An unused enrolment link an admin made for the account (`crate::enrolment`).
    #[serde(default)]
    pub enrolment: Option<crate::enrolment::EnrolmentLink>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TotpFactor {
    pub secret: Vec<u8>,
    pub enrolled_ms: i64,
    /// The last step a code was accepted for: codes are used once.
    pub last_step: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PasskeyFactor {
    /// Short id for pages and forms (not the credential id).
    pub id: String,
    pub name: String,
    pub passkey: Passkey,
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
}

/// Which mail protocol an app password opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    Imap,
    Smtp,
    Both,
}

impl Scope {
    pub fn allows(self, protocol: Protocol) -> bool {
        matches!(
            (self, protocol),
            (Scope::Both, _) | (Scope::Imap, Protocol::Imap) | (Scope::Smtp, Protocol::Smtp)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Imap => "IMAP",
            Scope::Smtp => "SMTP",
            Scope::Both => "IMAP and SMTP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Imap,
    Smtp,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppPassword {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub hash: [u8; 32],
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
    pub last_address: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnownNetwork {
    pub network: String,
    pub first_ms: i64,
    pub last_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignIn {
    pub at_ms: i64,
    pub address: String,
    /// "password and TOTP", "passkey", "app password Outlook", …
    pub method: String,
    pub ok: bool,
}

/// The network an address belongs to, as sign-in notices name it: IPv4 /24, IPv6 /48.
pub fn network_of(address: &str) -> String {
    let ip = address
        .parse::<std::net::SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| address.parse::<std::net::IpAddr>());
    match ip {
        Ok(std::net::IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => network_of(&v4.to_string()),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
            }
        },
        Err(_) => address.to_string(),
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    )
    .unwrap_or(i64::MAX)
}

fn undecodable() -> sealpost_storage::Error {
    sealpost_storage::Error::Corrupt {
        what: "a credential record that does not decode".into(),
    }
}

impl Credentials {
    /// The record in `bytes` (none yet: an empty one); `None` for bytes that do not decode,
    /// which callers must not overwrite: writing an empty record over them would drop the
    /// account's passkeys and app passwords without a word.
    pub fn decode(bytes: Option<&[u8]>) -> Option<Self> {
        match bytes {
            None => Some(Self::default()),
            Some(bytes) => serde_json::from_slice(bytes).ok(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The account's record as stored.
    pub fn load(store: &Store, account: AccountId) -> sealpost_storage::Result<Self> {
        Self::decode(store.credentials(account)?.as_deref()).ok_or_else(undecodable)
    }

    /// Changes the record with `change`, which returns the audit records of the change or
    /// `None` to leave it as it was; one write, serialised per account. Returns what
    /// `change` returned.
    pub fn update(
        store: &Store,
        account: AccountId,
        change: impl FnOnce(&mut Credentials) -> Option<Vec<AuditEvent>>,
    ) -> sealpost_storage::Result<bool> {
        let mut damaged = false;
        let changed = store.update_credentials(account, |bytes| {
            let Some(mut record) = Self::decode(bytes) else {
                damaged = true;
                return None;
            };
            let events = change(&mut record)?;
            Some((record.encode(), events))
        })?;
        if damaged {
            return Err(undecodable());
        }
        Ok(changed)
    }

    /// Whether the account has a second factor for the web.
    pub fn has_second_factor(&self) -> bool {
        self.totp.is_some() || !self.passkeys.is_empty()
    }

    /// Whether the account password may open an IMAP or SMTP session: only with neither a
    /// second factor required by policy nor one enrolled.
    pub fn password_opens_mail(&self, policy: &SignInSettings) -> bool {
        !policy.second_factor_required && !self.has_second_factor()
    }

    /// The app password `password` is, for `protocol`, if any (constant-time comparisons,
    /// every one made).
    pub fn app_password_index(&self, password: &str, protocol: Protocol) -> Option<usize> {
        let mut found = None;
        for (index, app) in self.app_passwords.iter().enumerate() {
            if secrets::matches(password, &app.hash) && app.scope.allows(protocol) {
                found = Some(index);
            }
        }
        found
    }

    /// Remembers a sign-in (bounded), and whether its network is new to the account.
    pub fn record_sign_in(&mut self, address: &str, method: &str, ok: bool) -> bool {
        let now = now_ms();
        self.sign_ins.insert(
            0,
            SignIn {
                at_ms: now,
                address: address.to_string(),
                method: method.to_string(),
                ok,
            },
        );
        self.sign_ins.truncate(SIGN_INS_KEPT_MAX);
        if !ok {
            return false;
        }
        let network = network_of(address);
        if let Some(known) = self.networks.iter_mut().find(|n| n.network == network) {
            known.last_ms = now;
            return false;
        }
        // The first sign-in ever is no news: there is nothing to compare with.
        let first_ever = self.networks.is_empty();
        if self.networks.len() >= NETWORKS_KEPT_MAX {
            if let Some(oldest) = self
                .networks
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| n.last_ms)
                .map(|(i, _)| i)
            {
                self.networks.remove(oldest);
            }
        }
        self.networks.push(KnownNetwork {
            network,
            first_ms: now,
            last_ms: now,
        });
        !first_ever
    }
}

/// How a mail client's login ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailLogin {
    /// With the method ("app password NAME", or "password" where policy allows it) and
    /// whether the client's network is new to the account.
    Accepted {
        account: Account,
        method: String,
        new_network: bool,
    },
    /// Wrong or unknown, all alike; `app_password_needed` when the account (if it exists)
    /// takes only app passwords, so the reply can say where to get one.
    Rejected {
        app_password_needed: bool,
    },
    Disabled(Account),
}

/// Checks a mail client's login: an app password of the account for `protocol`, or the
/// account password where policy and enrolment allow. Costs one argon2 verification
/// whatever the outcome (run it on a blocking thread). A matching app password gets its
/// last use (time and address) recorded.
pub fn mail_login(
    store: &Store,
    policy: &SignInSettings,
    login: &str,
    password: &str,
    protocol: Protocol,
    peer: &str,
) -> sealpost_storage::Result<MailLogin> {
    let Some(found) = store.find_account(login)? else {
        // The same argon2 cost as a real account, so timing does not tell.
        let _ = store.check_password(login, password)?;
        return Ok(MailLogin::Rejected {
            app_password_needed: policy.second_factor_required,
        });
    };
    let id = found.id;
    let credentials = Credentials::load(store, id)?;
    if let Some(index) = credentials.app_password_index(password, protocol) {
        let account = found;
        if account.status == sealpost_storage::AccountStatus::Disabled {
            return Ok(MailLogin::Disabled(account));
        }
        let name = credentials.app_passwords[index].name.clone();
        let method = format!("app password {name}");
        let mut new_network = false;
        let id_of = credentials.app_passwords[index].id.clone();
        Credentials::update(store, id, |record| {
            let app = record.app_passwords.iter_mut().find(|a| a.id == id_of)?;
            app.last_used_ms = Some(now_ms());
            app.last_address = Some(peer.to_string());
            new_network = record.record_sign_in(peer, &method, true);
            Some(vec![])
        })?;
        return Ok(MailLogin::Accepted {
            account,
            method,
            new_network,
        });
    }
    if !credentials.password_opens_mail(policy) {
        let _ = store.check_password(login, password)?;
        return Ok(MailLogin::Rejected {
            app_password_needed: true,
        });
    }
    Ok(match store.check_password(login, password)? {
        sealpost_storage::Login::Accepted(account) => MailLogin::Accepted {
            account,
            method: "password".into(),
            new_network: false,
        },
        sealpost_storage::Login::Rejected => MailLogin::Rejected {
            app_password_needed: false,
        },
        sealpost_storage::Login::Disabled(account) => MailLogin::Disabled(account),
    })
}

/// Why no app password was issued.
#[derive(Debug, thiserror::Error)]
pub enum AppPasswordRefused {
    /// The name is empty or longer than `CREDENTIAL_NAME_CHARS_MAX`.
    #[error("give it a name of 1 to {CREDENTIAL_NAME_CHARS_MAX} characters")]
    Name,
    /// The account has `APP_PASSWORDS_MAX` already.
    #[error("at most {APP_PASSWORDS_MAX} app passwords; revoke one first")]
    TooMany,
    /// The credential record could not be read or written.
    #[error("the account's credentials could not be changed: {0}")]
    Store(#[from] sealpost_storage::Error),
}

/// Issues an app password: the password (shown once) and the audit record. Refused past
/// `APP_PASSWORDS_MAX` or with an empty or overlong name.
pub fn issue_app_password(
    store: &Store,
    account: AccountId,
    name: &str,
    scope: Scope,
    actor: &Actor,
) -> Result<String, AppPasswordRefused> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > CREDENTIAL_NAME_CHARS_MAX {
        return Err(AppPasswordRefused::Name);
    }
    let (password, hash) = secrets::app_password();
    let mut refused = None;
    Credentials::update(store, account, |record| {
        if record.app_passwords.len() >= APP_PASSWORDS_MAX {
            refused = Some(AppPasswordRefused::TooMany);
            return None;
        }
        let id = secrets::token(6);
        record.app_passwords.push(AppPassword {
            id: id.clone(),
            name: name.to_string(),
            scope,
            hash,
            created_ms: now_ms(),
            last_used_ms: None,
            last_address: None,
        });
        Some(vec![AuditEvent::new(
            actor,
            "auth.app_password.issue",
            format!("account:{}", account.0),
        )
        .detail(format!(
            "app password {id} \"{name}\" for {}",
            scope.as_str()
        ))])
    })?;
    match refused {
        Some(why) => Err(why),
        None => Ok(password),
    }
}

/// Revokes an app password by id; false if there was none.
pub fn revoke_app_password(
    store: &Store,
    account: AccountId,
    id: &str,
    actor: &Actor,
) -> sealpost_storage::Result<bool> {
    Credentials::update(store, account, |record| {
        let index = record.app_passwords.iter().position(|a| a.id == id)?;
        let app = record.app_passwords.remove(index);
        Some(vec![AuditEvent::new(
            actor,
            "auth.app_password.revoke",
            format!("account:{}", account.0),
        )
        .detail(format!("app password {} \"{}\"", app.id, app.name))])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_prefixes_and_only_a_later_new_one_is_news() {
        assert_eq!(network_of("192.0.2.77:50123"), "192.0.2.0/24");
        assert_eq!(network_of("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(network_of("[2001:db8:1:2::5]:993"), "2001:db8:1::/48");
        assert_eq!(network_of("[::ffff:192.0.2.9]:1"), "192.0.2.0/24");
        let mut record = Credentials::default();
        assert!(
            !record.record_sign_in("192.0.2.1:1", "password and TOTP", true),
            "the first"
        );
        assert!(
            !record.record_sign_in("192.0.2.200:1", "passkey", true),
            "the same /24"
        );
        assert!(
            !record.record_sign_in("198.51.100.1:1", "passkey", false),
            "a failure is no sign-in"
        );
        assert!(
            record.record_sign_in("198.51.100.1:1", "passkey", true),
            "a new network"
        );
        assert_eq!(record.sign_ins.len(), 4);
        for n in 0..30 {
            record.record_sign_in(&format!("10.0.{n}.1:1"), "passkey", true);
        }
        assert_eq!(record.sign_ins.len(), SIGN_INS_KEPT_MAX);
    }

    #[test]
    fn password_opens_mail_only_without_a_second_factor_required_or_enrolled() {
        let open = SignInSettings {
            second_factor_required: false,
            ..SignInSettings::default()
        };
        let mut record = Credentials::default();
        assert!(!record.password_opens_mail(&SignInSettings::default()));
        assert!(record.password_opens_mail(&open));
        record.totp = Some(TotpFactor {
            secret: vec![1; 20],
            enrolled_ms: 0,
            last_step: None,
        });
        assert!(
            !record.password_opens_mail(&open),
            "enrolled: app passwords only"
        );
    }

    #[test]
    fn admins_always_need_a_passkey_and_staff_when_policy_says() {
        let account = |role| Account {
            id: AccountId(1),
            address: "a@clinic.example".into(),
            display_name: String::new(),
            role,
            status: sealpost_storage::AccountStatus::Active,
            created_at_ms: 0,
        };
        let default = SignInSettings::default();
        assert!(passkey_required(&default, &account(Role::Admin)));
        assert!(passkey_required(&default, &account(Role::Auditor)));
        assert!(!passkey_required(&default, &account(Role::Staff)));
        let strict = SignInSettings {
            passkey_required_for_staff: true,
            ..SignInSettings::default()
        };
        assert!(passkey_required(&strict, &account(Role::Staff)));
    }

    #[test]
    fn app_passwords_match_within_their_scope() {
        let mut record = Credentials::default();
        let (imap_only, hash) = secrets::app_password();
        record.app_passwords.push(AppPassword {
            id: "a".into(),
            name: "Thunderbird".into(),
            scope: Scope::Imap,
            hash,
            created_ms: 0,
            last_used_ms: None,
            last_address: None,
        });
        assert_eq!(
            record.app_password_index(&imap_only, Protocol::Imap),
            Some(0)
        );
        assert_eq!(record.app_password_index(&imap_only, Protocol::Smtp), None);
        assert_eq!(record.app_password_index("not it", Protocol::Imap), None);
        let decoded = Credentials::decode(Some(&record.encode())).unwrap();
        assert!(
            Credentials::decode(Some(b"not json")).is_none(),
            "damage is not an empty record"
        );
        assert_eq!(
            decoded.app_password_index(&imap_only, Protocol::Imap),
            Some(0)
        );
    }
}
