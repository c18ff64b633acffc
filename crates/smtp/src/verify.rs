//! Inbound sender authentication: SPF (MAIL FROM, or HELO for a null sender), DKIM and DMARC
//! with mail-auth, through a resolver whose DNS servers are configured (the system's by
//! default; a loopback server in tests). The result is an Authentication-Results field and,
//! when the policy says so, a refusal of a DMARC p=reject failure.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::SpfResult;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
};

/// How long one DNS query may take before it counts as a temporary error.
pub(crate) const DNS_TIMEOUT_MS: u64 = 5_000;
/// How long all the checks of one message may take; past it the message is delivered with
/// every result "temperror", as when DNS does not answer.
const CHECKS_TIMEOUT_MS: u64 = 20_000;

/// What to do with inbound mail whose authentication fails.
#[derive(Clone, Debug)]
pub struct InboundPolicy {
    /// Refuse (550 5.7.1) a message failing DMARC whose domain publishes p=reject.
    pub reject_dmarc_reject: bool,
}

impl Default for InboundPolicy {
    fn default() -> Self {
        Self {
            reject_dmarc_reject: true,
        }
    }
}

/// Checks inbound messages. Cheap to share: one resolver with its cache.
pub struct InboundAuth {
    authenticator: MessageAuthenticator,
    hostname: String,
    policy: InboundPolicy,
}

/// The outcome for one message.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// `Authentication-Results: ...\r\n`, to put at the top of the message.
    pub header: String,
    /// A refusal reply, when the policy refuses the message.
    pub refusal: Option<String>,
    /// `spf=pass dkim=pass dmarc=pass`, for the audit record.
    pub summary: String,
}

impl InboundAuth {
    /// A checker asking `dns_servers` (UDP and TCP), or the system's resolvers when empty.
    pub fn new(
        dns_servers: &[SocketAddr],
        hostname: &str,
        policy: InboundPolicy,
    ) -> std::io::Result<Self> {
        let authenticator = make_resolver(dns_servers)?;
        Ok(Self {
            authenticator,
            hostname: hostname.to_string(),
            policy,
        })
    }

    /// SPF, DKIM and DMARC for one message received from `peer` after `helo` and
    /// `mail_from`, within CHECKS_TIMEOUT_MS.
    pub async fn check(&self, raw: &[u8], peer: IpAddr, helo: &str, mail_from: &str) -> Verdict {
        let checks = self.check_unbounded(raw, peer, helo, mail_from);
        match tokio::time::timeout(Duration::from_millis(CHECKS_TIMEOUT_MS), checks).await {
            Ok(verdict) => verdict,
            Err(_) => Verdict {
                header: format!(
                    "Authentication-Results: {};\r\n\tspf=temperror (timeout);\r\n\tdkim=temperror (timeout);\r\n\tdmarc=temperror (timeout)\r\n",
                    self.hostname
                ),
                refusal: None,
                summary: "spf=temperror dkim=temperror dmarc=temperror".into(),
            },
        }
    }

    async fn check_unbounded(
        &self,
        raw: &[u8],
        peer: IpAddr,
        helo: &str,
        mail_from: &str,
    ) -> Verdict {
        let spf = if mail_from.is_empty() {
            self.authenticator
                .verify_spf(SpfParameters::verify_ehlo(peer, helo, &self.hostname))
                .await
        } else {
            let domain = mail_from.rsplit_once('@').map_or("", |(_, d)| d);
            self.authenticator
                .verify_spf(SpfParameters::verify_mail_from(
                    peer,
                    domain,
                    &self.hostname,
                    mail_from,
                ))
                .await
        };
        let mut results = AuthenticationResults::new(&self.hostname);
        results = if mail_from.is_empty() {
            results.with_spf_ehlo_result(&spf, peer, helo)
        } else {
            results.with_spf_mailfrom_result(&spf, peer, mail_from, helo)
        };
        let spf_word = spf_word(spf.result());
        let Some(message) = AuthenticatedMessage::parse(raw) else {
            // Not parseable as a message: no DKIM or DMARC to speak of.
            return Verdict {
                header: results.to_header(),
                refusal: None,
                summary: format!("spf={spf_word} dkim=none dmarc=none"),
            };
        };
        let dkim = self.authenticator.verify_dkim(&message).await;
        let from_domain = message
            .from()
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_lowercase();
        let header_from = message.from().to_string();
        results = results.with_dkim_results(&dkim, &header_from);
        let spf_domain = if mail_from.is_empty() {
            helo.to_string()
        } else {
            mail_from
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_string()
        };
        let dmarc = self
            .authenticator
            .verify_dmarc(DmarcParameters::new(&message, &dkim, &spf_domain, &spf))
            .await;
        results = results.with_dmarc_result(&dmarc);
        let dkim_word = match dkim.first().map(|d| d.result()) {
            None => "none",
            Some(DkimResult::Pass) => "pass",
            Some(DkimResult::Neutral(_)) => "neutral",
            Some(DkimResult::Fail(_)) => "fail",
            Some(DkimResult::PermError(_)) => "permerror",
            Some(DkimResult::TempError(_)) => "temperror",
            Some(DkimResult::None) => "none",
        };
        let dmarc_result = dmarc.result();
        let dmarc_word = match &dmarc_result {
            DmarcResult::Pass => "pass",
            DmarcResult::Fail(_) => "fail",
            DmarcResult::TempError(_) => "temperror",
            DmarcResult::PermError(_) => "permerror",
            DmarcResult::None => "none",
        };
        let dmarc_failed = matches!(dmarc_result, DmarcResult::Fail(_));
        let refusal = (self.policy.reject_dmarc_reject
            && dmarc_failed
            && dmarc.policy() == Policy::Reject)
            .then(|| {
                format!("550 5.7.1 the message fails DMARC and {from_domain} asks for rejection")
            });
        Verdict {
            header: results.to_header(),
            refusal,
            summary: format!("spf={spf_word} dkim={dkim_word} dmarc={dmarc_word}"),
        }
    }
}

/// A resolver asking `dns_servers` (UDP and TCP), or the system's resolvers when empty.
/// The DNS servers asked: those configured, else the system's (from /etc/resolv.conf).
pub(crate) fn resolver_addresses(dns_servers: &[SocketAddr]) -> std::io::Result<Vec<SocketAddr>> {
    if !dns_servers.is_empty() {
        return Ok(dns_servers.to_vec());
    }
    let (config, _) =
        mail_auth::hickory_resolver::system_conf::read_system_conf().map_err(|e| {
            std::io::Error::other(format!("reading the system's DNS configuration: {e}"))
        })?;
    Ok(config
        .name_servers()
        .iter()
        .map(|server| {
            let port = server.connections.first().map_or(53, |c| c.port);
            SocketAddr::new(server.ip, port)
        })
        .collect())
}

pub(crate) fn make_resolver(dns_servers: &[SocketAddr]) -> std::io::Result<MessageAuthenticator> {
    let mut options = ResolverOpts::default();
    options.timeout = Duration::from_millis(DNS_TIMEOUT_MS);
    options.attempts = 2;
    if dns_servers.is_empty() {
        let (config, _) =
            mail_auth::hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                std::io::Error::other(format!("reading the system's DNS configuration: {e}"))
            })?;
        return MessageAuthenticator::new(config, options)
            .map_err(|e| std::io::Error::other(format!("making the DNS resolver: {e}")));
    }
    let servers = dns_servers
        .iter()
        .map(|server| {
            let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                .into_iter()
                .map(|mut c| {
                    c.port = server.port();
                    c
                })
                .collect();
            NameServerConfig::new(server.ip(), true, connections)
        })
        .collect();
    MessageAuthenticator::new(ResolverConfig::from_parts(None, vec![], servers), options)
        .map_err(|e| std::io::Error::other(format!("making the DNS resolver: {e}")))
}

fn spf_word(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// What kind of record `dns_answers` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsKind {
    Mx,
    Txt,
}

/// What DNS answers for each (name, kind) asked, through `dns_servers` (the system's when
/// empty), for the health page: the records' texts (MX: the hosts), or why there are none.
pub async fn dns_answers(
    dns_servers: &[SocketAddr],
    questions: &[(String, DnsKind)],
) -> Vec<Result<Vec<String>, String>> {
    let resolver = match make_resolver(dns_servers) {
        Ok(resolver) => resolver,
        Err(error) => return questions.iter().map(|_| Err(error.to_string())).collect(),
    };
    let mut out = Vec::with_capacity(questions.len());
    for (name, kind) in questions {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let answer = match kind {
            DnsKind::Mx => resolver
                .0
                .mx_lookup(fqdn.as_str())
                .await
                .map(|lookup| {
                    lookup
                        .answers()
                        .iter()
                        .filter_map(|record| match &record.data {
                            mail_auth::hickory_resolver::proto::rr::RData::MX(mx) => {
                                Some(mx.exchange.to_ascii().trim_end_matches('.').to_lowercase())
                            }
                            _ => None,
                        })
                        .collect()
                })
                .map_err(|e| e.to_string()),
            DnsKind::Txt => resolver
                .txt_raw_lookup(fqdn.as_str())
                .await
                .map(|bytes| vec![String::from_utf8_lossy(&bytes).into_owned()])
                .map_err(|e| e.to_string()),
        };
        out.push(answer);
    }
    out
}
