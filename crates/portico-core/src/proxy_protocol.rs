//! PROXY protocol v1 (text) and v2 (binary) from a load balancer in front, and v2
//! headers for backends behind ([`encode_v2`]).
//!
//! Exactly the header's bytes are read, never more, so the stream continues with the
//! client's own first byte.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;
/// Larger v2 headers (many TLVs) are refused rather than buffered.
const V2_MAX_LEN: usize = 4096;

/// The client and proxy addresses the header carried; `None` for LOCAL / UNKNOWN.
pub type ProxiedAddrs = Option<(SocketAddr, SocketAddr)>;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("PROXY protocol: {}", msg.into()),
    )
}

/// Reads one PROXY protocol header (v1 or v2) from `s`.
pub async fn read_header<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<ProxiedAddrs> {
    let mut start = [0u8; 5];
    s.read_exact(&mut start).await?;
    if &start == b"PROXY" {
        let mut line = start.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(bad("v1 header longer than 107 bytes"));
            }
            line.push(s.read_u8().await?);
        }
        return parse_v1(&line[..line.len() - 2]);
    }
    if start != V2_SIG[..5] {
        return Err(bad("missing header"));
    }
    let mut rest = [0u8; 11];
    s.read_exact(&mut rest).await?;
    if rest[..7] != V2_SIG[5..] {
        return Err(bad("bad v2 signature"));
    }
    let (ver_cmd, fam) = (rest[7], rest[8]);
    let len = usize::from(u16::from_be_bytes([rest[9], rest[10]]));
    if ver_cmd >> 4 != 2 {
        return Err(bad("unsupported v2 version"));
    }
    if len > V2_MAX_LEN {
        return Err(bad("v2 header too long"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    parse_v2(ver_cmd & 0x0f, fam, &body)
}

fn parse_v1(line: &[u8]) -> io::Result<ProxiedAddrs> {
    let text = std::str::from_utf8(line).map_err(|_| bad("v1 header is not ASCII"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> io::Result<IpAddr> {
                let ip: IpAddr = s.parse().map_err(|_| bad(format!("bad address {s:?}")))?;
                if ip.is_ipv4() != (*fam == "TCP4") {
                    return Err(bad("address does not match the family"));
                }
                Ok(ip)
            };
            let port = |s: &str| -> io::Result<u16> {
                if s.len() > 1 && s.starts_with('0') {
                    return Err(bad("port with leading zero"));
                }
                s.parse().map_err(|_| bad(format!("bad port {s:?}")))
            };
            Ok(Some((
                SocketAddr::new(ip(src)?, port(sport)?),
                SocketAddr::new(ip(dst)?, port(dport)?),
            )))
        }
        _ => Err(bad("malformed v1 header")),
    }
}

fn parse_v2(cmd: u8, fam: u8, body: &[u8]) -> io::Result<ProxiedAddrs> {
    match cmd {
        0 => return Ok(None), // LOCAL: health check from the balancer itself
        1 => {}
        _ => return Err(bad("unknown v2 command")),
    }
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match fam >> 4 {
        1 if body.len() >= 12 => {
            let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let dst = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            Ok(Some((
                SocketAddr::new(src.into(), be16(&body[8..])),
                SocketAddr::new(dst.into(), be16(&body[10..])),
            )))
        }
        2 if body.len() >= 36 => {
            let mut a = [0u8; 16];
            let mut b = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            b.copy_from_slice(&body[16..32]);
            Ok(Some((
                SocketAddr::new(Ipv6Addr::from(a).into(), be16(&body[32..])),
                SocketAddr::new(Ipv6Addr::from(b).into(), be16(&body[34..])),
            )))
        }
        1 | 2 => Err(bad("v2 address block too short")),
        _ => Ok(None), // AF_UNSPEC / AF_UNIX: keep the socket's own addresses
    }
}

/// A v2 PROXY header saying the connection comes from `src` to `dst` (mixed address
/// families are sent as IPv6, v4 addresses mapped).
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIG.to_vec();
    out.push(0x21); // version 2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&b.octets());
        }
        (a, b) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(a).octets());
            out.extend_from_slice(&v6(b).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn encoded_v2_headers_read_back() {
        for (src, dst) in [
            ("203.0.113.50:40000", "127.0.0.1:143"),
            ("[2001:db8::1]:5000", "[::1]:993"),
        ] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let mut wire = encode_v2(src, dst);
            wire.extend_from_slice(b"GET");
            assert_eq!(read(&wire).await.unwrap(), Some((src, dst)));
        }
        let mixed = encode_v2("192.0.2.1:1".parse().unwrap(), "[::1]:2".parse().unwrap());
        assert_eq!(mixed[13], 0x21, "sent as IPv6");
    }

    async fn read(bytes: &[u8]) -> io::Result<ProxiedAddrs> {
        let mut s = bytes;
        let r = read_header(&mut s).await;
        if r.is_ok() {
            assert_eq!(s, b"GET", "exactly the header is consumed");
        }
        r
    }

    #[tokio::test]
    async fn v1() {
        let got = read(b"PROXY TCP4 192.0.2.1 198.51.100.2 5555 443\r\nGET")
            .await
            .unwrap();
        assert_eq!(
            got,
            Some((
                "192.0.2.1:5555".parse().unwrap(),
                "198.51.100.2:443".parse().unwrap()
            ))
        );
        let got = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\nGET")
            .await
            .unwrap();
        assert_eq!(got.unwrap().0, "[2001:db8::1]:1".parse().unwrap());
        assert_eq!(read(b"PROXY UNKNOWN\r\nGET").await.unwrap(), None);
        assert!(read(b"PROXY TCP4 1.2.3.4 nope 1 2\r\nGET").await.is_err());
        assert!(read(b"PROXY TCP4 ::1 ::1 1 2\r\nGET").await.is_err());
        assert!(read(&[b"PROXY ".as_slice(), &[b'A'; 200]].concat())
            .await
            .is_err());
        assert!(read(b"GET / HTTP/1.1\r\n").await.is_err());
    }

    #[tokio::test]
    async fn v2() {
        let mut h = V2_SIG.to_vec();
        h.extend([
            0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x01, 0xbb,
        ]);
        h.extend(b"GET");
        let got = read(&h).await.unwrap();
        assert_eq!(
            got,
            Some((
                "10.0.0.1:8080".parse().unwrap(),
                "10.0.0.2:443".parse().unwrap()
            ))
        );
        let mut local = V2_SIG.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        local.extend(b"GET");
        assert_eq!(read(&local).await.unwrap(), None);
        let mut short = V2_SIG.to_vec();
        short.extend([0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        short.extend(b"GET");
        assert!(read(&short).await.is_err());
    }
}
