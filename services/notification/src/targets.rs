//! Where a tenant may send alerts. A webhook reaches only public addresses: never loopback,
//! private, link-local (cloud metadata among them), unique-local, multicast, unspecified or
//! reserved ranges, whether named by an IP literal, a decimal or hex spelling of one, or a host
//! name that resolves there; an operator's allow-list opens ranges for on-premise receivers.
//! An email recipient needs a dotted, public domain.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What an operator allows beyond the public internet.
#[derive(Clone, Debug, Default)]
pub struct Allowed {
    /// Plain http (development only); otherwise https.
    pub http: bool,
    /// Ranges allowed although internal, e.g. an on-premise receiver's network.
    pub ranges: Vec<IpNet>,
}

impl Allowed {
    /// Whether a delivery may connect to `ip`.
    pub fn ip(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(&ip)) || is_public(ip)
    }
}

fn v4_public(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || o[0] == 0                                    // "this network"
        || ip.is_private()                              // 10/8, 172.16/12, 192.168/16
        || ip.is_loopback()                             // 127/8
        || ip.is_link_local()                           // 169.254/16, cloud metadata
        || (o[0] == 100 && (o[1] & 0xc0) == 64)         // 100.64/10, carrier-grade NAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)      // 192.0.0/24, protocol assignments
        || (o[0] == 192 && o[1] == 88 && o[2] == 99)    // 192.88.99/24, 6to4 relays
        || ip.is_documentation()                        // 192.0.2/24, 198.51.100/24, 203.0.113/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18)         // 198.18/15, benchmarking
        || ip.is_multicast()                            // 224/4
        || o[0] >= 240) // 240/4 reserved, broadcast
}

fn v6_public(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Addresses that carry an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_public(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return v4_public(embedded(s[6], s[7])); // NAT64
    }
    if s[0] == 0x2002 {
        return v4_public(embedded(s[1], s[2])); // 6to4
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[0..6] == [0, 0, 0, 0, 0, 0]                // IPv4-compatible, deprecated
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // 64:ff9b:1::/48, local NAT64
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0])      // 100::/64, discard
        || (s[0] == 0x2001 && s[1] == 0)                // 2001::/32, Teredo
        || (s[0] == 0x2001 && s[1] == 0xdb8)            // documentation
        || (s[0] & 0xfe00) == 0xfc00                    // fc00::/7, unique-local
        || (s[0] & 0xffc0) == 0xfe80                    // fe80::/10, link-local
        || (s[0] & 0xffc0) == 0xfec0                    // fec0::/10, site-local
        || ip.is_multicast())
}

/// Whether `ip` lies on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_public(v4),
        IpAddr::V6(v6) => v6_public(v6),
    }
}

/// A webhook URL whose form is acceptable; its host still has to resolve to allowed addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    pub url: reqwest::Url,
    /// The host, or None when the URL names an IP address.
    pub host: Option<String>,
    pub port: u16,
}

/// Checks a webhook URL's form and, when it names an address, the address.
pub fn webhook_url(text: &str, allowed: &Allowed) -> Result<WebhookUrl, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allowed.http => {}
        "http" => return Err("must be an https URL".into()),
        _ => return Err("must be an https URL".into()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; the signature authenticates the sender".into());
    }
    let port = url.port_or_known_default().filter(|p| *p != 0).ok_or("must have a port other than 0")?;
    // The parser has turned every spelling of an address (decimal, hex, short forms) into one.
    let host = match url.host() {
        Some(url::Host::Ipv4(ip)) => return address_only(url.clone(), IpAddr::V4(ip), port, allowed),
        Some(url::Host::Ipv6(ip)) => return address_only(url.clone(), IpAddr::V6(ip), port, allowed),
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
        None => return Err("must have a host".into()),
    };
    if host == "localhost" || host.ends_with(".localhost") {
        return Err(INTERNAL.into());
    }
    Ok(WebhookUrl { host: Some(host), url, port })
}

/// The refusal of an address that is not on the public internet.
pub const INTERNAL: &str = "must reach a public address, not a loopback, private, link-local or reserved one";

fn address_only(url: reqwest::Url, ip: IpAddr, port: u16, allowed: &Allowed) -> Result<WebhookUrl, String> {
    if !allowed.ip(ip) {
        return Err(INTERNAL.into());
    }
    Ok(WebhookUrl { url, host: None, port })
}

/// Top-level domains that never reach the public internet.
const PRIVATE_TLDS: &[&str] = &[
    "localhost",
    "local",
    "localdomain",
    "internal",
    "intranet",
    "private",
    "corp",
    "home",
    "lan",
    "invalid",
    "test",
    "example",
    "arpa",
    "onion",
];

/// Checks the domain of an email recipient: a dotted name with a public top-level domain, not an
/// address literal.
pub fn email_domain(domain: &str) -> Result<(), &'static str> {
    // Invisible characters make a domain that reads as another.
    if domain.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err("must not contain invisible characters");
    }
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    if d.starts_with('[') || d.parse::<IpAddr>().is_ok() {
        return Err("must name a domain, not an address");
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 || labels.iter().any(|l| l.is_empty()) {
        return Err("must have a dotted domain");
    }
    let tld = labels[labels.len() - 1];
    if tld.chars().all(|c| c.is_ascii_digit()) || PRIVATE_TLDS.contains(&tld) {
        return Err("must have a public domain");
    }
    Ok(())
}

/// Format characters that render as nothing: zero-width spaces and joiners, bidirectional marks,
/// word joiners, the byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{00ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> String {
        webhook_url(url, &Allowed::default()).err().unwrap_or_else(|| panic!("{url} was accepted"))
    }

    #[test]
    fn internal_addresses_are_refused_in_every_spelling() {
        for url in [
            "https://169.254.169.254/latest/meta-data",
            "https://127.0.0.1:5432/",
            "https://localhost/",
            "https://LOCALHOST./",
            "https://a.localhost/",
            "https://[::1]/",
            "https://0.0.0.0/",
            "https://2130706433/",
            "https://0x7f000001/",
            "https://017700000001/",
            "https://127.1/",
            "https://10.1.2.3/",
            "https://172.20.0.1/",
            "https://192.168.1.1/",
            "https://100.100.100.200/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:7f00:1::]/",
            "https://[fd00:ec2::254]/",
            "https://[fe80::1]/",
            "https://[ff02::1]/",
            "https://224.0.0.1/",
            "https://255.255.255.255/",
            "https://192.88.99.1/",
        ] {
            assert_eq!(refused(url), INTERNAL, "{url}");
        }
    }

    #[test]
    fn https_is_required_unless_plain_http_is_allowed() {
        assert_eq!(refused("http://hooks.example.com/x"), "must be an https URL");
        assert_eq!(refused("ftp://hooks.example.com/x"), "must be an https URL");
        assert!(refused("https://user:pw@hooks.example.com/").contains("credentials"));
        assert!(refused("https://hooks.example.com:0/").contains("port"));
        let dev = Allowed { http: true, ranges: vec![] };
        let ok = webhook_url("http://hooks.example.com:8080/x", &dev).unwrap();
        assert_eq!((ok.host.as_deref(), ok.port), (Some("hooks.example.com"), 8080));
    }

    #[test]
    fn public_addresses_pass_and_an_allow_list_opens_internal_ranges() {
        let ok = webhook_url("https://93.184.215.14/hook", &Allowed::default()).unwrap();
        assert_eq!((ok.host, ok.port), (None, 443));
        assert!(is_public("2606:4700::1111".parse().unwrap()));
        let on_premise = Allowed { http: false, ranges: vec!["10.0.0.0/8".parse().unwrap()] };
        assert!(webhook_url("https://10.1.2.3/", &on_premise).is_ok());
        assert!(webhook_url("https://192.168.1.1/", &on_premise).is_err());
    }

    #[test]
    fn email_recipients_need_a_dotted_public_domain() {
        for bad in [
            "localhost",
            "[127.0.0.1]",
            "127.0.0.1",
            "mailhost",
            "corp.internal",
            "x.local",
            "a.b.123",
            "example..com",
            "exa\u{200b}mple.com",
        ] {
            assert!(email_domain(bad).is_err(), "{bad}");
        }
        for good in ["example.com", "mail.example.co.uk", "xn--bcher-kva.de."] {
            assert!(email_domain(good).is_ok(), "{good}");
        }
    }
}
