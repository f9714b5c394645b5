//! Behind a TLS-terminating proxy, every connection comes from the proxy.
//! The proxies an operator names are trusted to say who their client was
//! in `X-Forwarded-For`; nobody else is, since a client can write any header.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;

use crate::error::ApiError;
use crate::AppState;

/// A range of addresses: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.address, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix) == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix) == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of an address `bits` wide.
fn masked(address: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        address >> (bits - prefix)
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let bad = || format!("{text:?} is not an address or a range such as 10.0.0.0/8 or fd00::/8");
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().ok().filter(|p| *p <= width).ok_or_else(bad)?,
            None => width,
        };
        Ok(Network { address, prefix })
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Who the client is: the peer, unless the peer is a trusted proxy; then
/// the nearest address in `X-Forwarded-For`, read from the right, that is
/// not itself a trusted proxy. An entry that does not read as an address
/// stops the walk at the last hop vouched for.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Network]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    let mut client = peer;
    for hop in forwarded.iter().flat_map(|v| v.split(',')).rev() {
        let Ok(hop) = hop.trim().parse::<IpAddr>() else { break };
        client = hop;
        if !is_trusted(hop) {
            break;
        }
    }
    client
}

/// The client's address, as [`client_address`] finds it.
pub struct ClientAddress(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("the connection's address is unknown"))?;
        Ok(ClientAddress(client_address(peer.ip(), &parts.headers, state.trusted_proxies())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_read_and_contain_what_they_say() {
        let net: Network = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.200.1.1")) && !net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "an IPv4-mapped IPv6 address");
        let one: Network = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Network = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!("0.0.0.0/0".parse::<Network>().unwrap().contains(ip("203.0.113.9")));
        for bad in ["10.0.0.0/33", "proxy", "10.0.0/8", "::/129", ""] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?} was read");
        }
    }

    #[test]
    fn only_a_trusted_proxy_is_believed_about_its_client() {
        let trusted: Vec<Network> = vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let forged = headers(&["198.51.100.7"]);
        // Anyone else's header is ignored.
        assert_eq!(client_address(ip("203.0.113.5"), &forged, &trusted), ip("203.0.113.5"));
        assert_eq!(client_address(ip("127.0.0.1"), &forged, &[]), ip("127.0.0.1"));
        // The proxy's word is taken, from the right, past other trusted hops.
        assert_eq!(client_address(ip("127.0.0.1"), &headers(&["203.0.113.5"]), &trusted), ip("203.0.113.5"));
        let chain = headers(&["198.51.100.7, 203.0.113.5", "10.1.1.1"]);
        assert_eq!(
            client_address(ip("127.0.0.1"), &chain, &trusted),
            ip("203.0.113.5"),
            "a client's own header is not believed"
        );
        // Garbage stops at the last hop vouched for; no header is the proxy itself.
        assert_eq!(client_address(ip("127.0.0.1"), &headers(&["not-an-ip, 10.2.2.2"]), &trusted), ip("10.2.2.2"));
        assert_eq!(client_address(ip("127.0.0.1"), &HeaderMap::new(), &trusted), ip("127.0.0.1"));
    }
}
