//! Where webhooks may be sent: public addresses only, unless the operator allows more.
//!
//! Endpoints are set by org admins — tenants, not the operator — so without a check they
//! could make the control plane POST to services on its own network (a database's HTTP
//! port, a cloud metadata service at `169.254.169.254`) and read reachability back from a
//! delivery's `last_status` and `last_error`. With `delivery.allow_private_targets: false`
//! (the default):
//!
//! - at create and update, a URL whose host is a non-public IP literal, `localhost` (or a
//!   `*.localhost` name), or a name resolving to any non-public address is refused;
//! - at delivery, a non-public IP literal is refused, and names are resolved by
//!   [`PublicOnlyResolver`], which drops non-public addresses (and fails the attempt when
//!   none is left) — so a name that resolves elsewhere *after* the endpoint was created
//!   (DNS rebinding) is caught where it matters: at connect time. Such an attempt fails with
//!   [`NOT_ALLOWED`] and nothing more about the network.
//!
//! "Public" is [`is_public`]: everything but the special-purpose ranges IANA marks as not
//! globally reachable (and multicast).

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::Control;

/// The error of a delivery attempt to a refused address: the whole of what a delivery's
/// `last_error` says about it.
pub const NOT_ALLOWED: &str = "target address not allowed";

/// The hint the service adds to a refused URL.
const SETTING_HINT: &str = "webhooks may only go to public addresses unless the control \
     plane's operator sets delivery.allow_private_targets: true";

/// How long create and update wait for a name's resolution before letting it through
/// (the delivery-time check still applies).
const RESOLVE_LIMIT: Duration = Duration::from_secs(5);

/// Whether `ip` is an address webhooks may go to without `allow_private_targets`: not
/// unspecified, loopback, private, shared (CGNAT), link-local, documentation, benchmarking,
/// reserved, broadcast or multicast; IPv6 likewise (unique local `fc00::/7`, link-local
/// `fe80::/10`, site-local, discard, IETF protocol assignments), and the IPv4 address
/// inside IPv4-mapped, NAT64 and 6to4 addresses is checked as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                    // "this network", unspecified
        || a == 10                              // private
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || a == 127                             // loopback
        || (a == 169 && b == 254)               // link-local (cloud metadata)
        || (a == 172 && (16..32).contains(&b))  // private
        || (a == 192 && b == 0 && c == 0)       // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)       // documentation
        || (a == 192 && b == 168)               // private
        || (a == 198 && (18..20).contains(&b))  // benchmarking
        || (a == 198 && b == 51 && c == 100)    // documentation
        || (a == 203 && b == 0 && c == 113)     // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96): the IPv4 address it translates to.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])));
    }
    // 6to4 (2002::/16): the IPv4 address of the relay it reaches.
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    !(s[..6] == [0; 6]                          // ::/96: unspecified, loopback, IPv4-compatible
        || s[..3] == [0x64, 0xff9b, 1]          // local-use NAT64
        || s[..4] == [0x100, 0, 0, 0]           // discard
        || (s[0] == 0x2001 && s[1] < 0x200)     // IETF protocol assignments (Teredo, …)
        || (s[0] == 0x2001 && s[1] == 0xdb8)    // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000)   // documentation (RFC 9637)
        || s[0] == 0x5f00                       // segment routing SIDs
        || (s[0] & 0xfe00) == 0xfc00            // unique local
        || (s[0] & 0xffc0) == 0xfe80            // link-local
        || (s[0] & 0xffc0) == 0xfec0            // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00) // multicast
}

/// `localhost` and `*.localhost` (RFC 6761: always the loopback, whatever DNS says).
fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The host of `url` when it is an IP literal.
pub fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Checks a new or changed endpoint URL (parsed, http or https): `Err` with the message of
/// a 400 when it names a non-public address or a name that resolves to one. A name that
/// does not resolve (yet) is let through: each delivery attempt checks again.
pub async fn check_url_target(url: &reqwest::Url) -> Result<(), String> {
    let host = url.host_str().unwrap_or_default();
    if let Some(ip) = literal_ip(url) {
        if is_public(ip) {
            return Ok(());
        }
        return Err(format!(
            "webhook url host {host} is not a public address (loopback, private, link-local \
             or otherwise special): {SETTING_HINT}"
        ));
    }
    if is_local_name(host) {
        return Err(format!(
            "webhook url host {host:?} is the local machine: {SETTING_HINT}"
        ));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let lookup = tokio::time::timeout(RESOLVE_LIMIT, tokio::net::lookup_host((host, port))).await;
    match lookup {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.iter().all(|a| is_public(a.ip())) {
                Ok(())
            } else {
                Err(format!(
                    "webhook url host {host:?} resolves to an address that is not public \
                     (loopback, private, link-local or otherwise special): {SETTING_HINT}"
                ))
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "webhook url host does not resolve; checked again at delivery");
            Ok(())
        }
        Err(_) => {
            tracing::debug!("webhook url host did not resolve in time; checked again at delivery");
            Ok(())
        }
    }
}

/// A delivery attempt's target was refused (see [`NOT_ALLOWED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetNotAllowed;

impl fmt::Display for TargetNotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(NOT_ALLOWED)
    }
}

impl StdError for TargetNotAllowed {}

/// Whether `e` or any error it wraps is [`TargetNotAllowed`].
pub fn is_not_allowed(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<TargetNotAllowed>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// The webhook client's resolver without `allow_private_targets`: the system resolver's
/// answer minus every non-public address. No address left fails the connection with
/// [`TargetNotAllowed`]; `localhost` names fail without a lookup.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            if is_local_name(&host) {
                return Err(Box::new(TargetNotAllowed) as Box<dyn StdError + Send + Sync>);
            }
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(TargetNotAllowed) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Each running control plane's `allow_private_targets` (a process may run several, as the
/// tests do), for the service's create and update checks. Set by [`crate::webhooks::start`].
/// The `Weak` keeps a dropped `Control`'s address from being reused while its entry lives.
static POLICIES: Mutex<Vec<(Weak<Control>, bool)>> = Mutex::new(Vec::new());

/// Records `ctl`'s setting.
pub(crate) fn set_allow_private(ctl: &Arc<Control>, allow: bool) {
    let mut policies = POLICIES.lock().unwrap_or_else(|e| e.into_inner());
    policies.retain(|(w, _)| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(ctl)));
    policies.push((Arc::downgrade(ctl), allow));
}

/// `ctl`'s setting; false (the safe default) for a `Control` whose webhooks never started.
pub(crate) fn allow_private(ctl: &Control) -> bool {
    POLICIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(w, _)| std::ptr::eq(w.as_ptr(), ctl))
        .is_some_and(|(_, allow)| *allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "3fff::1",
            "2002:a00:1::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.254",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "3fff:1000::1",
        ] {
            assert!(is_public(ip(public)), "{public}");
        }
    }

    #[test]
    fn localhost_names_are_local() {
        for name in ["localhost", "LOCALHOST", "localhost.", "api.localhost"] {
            assert!(is_local_name(name), "{name}");
        }
        for name in ["localhost.example.com", "mylocalhost", "example.com"] {
            assert!(!is_local_name(name), "{name}");
        }
    }

    #[tokio::test]
    async fn create_time_check_refuses_private_targets() {
        for url in [
            "http://127.0.0.1:9000/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://localhost:8080/",
            "http://api.localhost/",
            "https://[::ffff:192.168.0.1]/",
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            let err = check_url_target(&parsed).await.unwrap_err();
            assert!(
                err.contains("delivery.allow_private_targets"),
                "{url}: {err}"
            );
        }
        let public = reqwest::Url::parse("https://93.184.215.14/hook").unwrap();
        assert!(check_url_target(&public).await.is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_local_names_with_a_recognizable_error() {
        let client = reqwest::Client::builder()
            .dns_resolver(PublicOnlyResolver)
            .no_proxy()
            .build()
            .unwrap();
        let err = client
            .post("http://localhost:9/x")
            .send()
            .await
            .unwrap_err();
        assert!(is_not_allowed(&err), "{err:?}");
    }

    #[tokio::test]
    async fn policies_are_per_control_plane() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gate.db").display());
        let store = gate_store::Store::connect(&gate_store::StoreOptions::new(url))
            .await
            .unwrap();
        let open = Control::new(store.clone(), Default::default());
        let closed = Control::new(store.clone(), Default::default());
        let unset = Control::new(store, Default::default());
        set_allow_private(&open, true);
        set_allow_private(&closed, false);
        assert!(allow_private(&open));
        assert!(!allow_private(&closed));
        assert!(!allow_private(&unset), "the default is closed");
        set_allow_private(&open, false);
        assert!(
            !allow_private(&open),
            "a restart's setting replaces the old one"
        );
        drop(closed);
        set_allow_private(&open, true);
        assert!(allow_private(&open));
    }
}
