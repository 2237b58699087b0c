//! The WebSocket module: once the HTTP module has seen the upstream answer `101
//! Switching Protocols`, it hands both upgraded connections here. [`tunnel`] relays bytes
//! both ways unchanged (frames, pings and close codes pass through as they are), with
//! bounded buffers (a direction reads again only after its last read was written), an
//! idle timeout, an optional maximum lifetime, and a drain on shutdown that ends with a
//! `1001 Going Away` close frame to both peers.
//!
//! It knows nothing of HTTP: the handshake is the HTTP module's (`portico-http`
//! `proxy::forward_upgrade`).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// Why a tunnel ended: the relay's answer (`UpstreamError` also for an upstream that hung
/// up without a close frame).
pub use portico_core::relay::RelayEnd as TunnelEnd;
/// Limits of one tunnel: the listener core's relay limits (idle, max lifetime, drain).
pub use portico_core::relay::RelayLimits as TunnelLimits;

/// Follows the frame headers of one direction (without looking at payloads) to notice
/// a close frame: an upstream that ends its connection without having sent one died
/// mid-stream, as far as passive health is concerned.
#[derive(Debug, Default)]
struct FrameScanner {
    /// Header bytes of the frame being read.
    head: Vec<u8>,
    /// Payload bytes still to skip.
    skip: u64,
    saw_close: bool,
    /// The stream stopped looking like WebSocket frames: stop judging.
    lost: bool,
}

impl FrameScanner {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                self.skip -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head.push(bytes[0]);
            bytes = &bytes[1..];
            let h = &self.head;
            if h.len() < 2 {
                continue;
            }
            let masked = h[1] & 0x80 != 0;
            let len7 = u64::from(h[1] & 0x7f);
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let need = 2 + ext + if masked { 4 } else { 0 };
            if h.len() < need {
                continue;
            }
            let len = match ext {
                0 => len7,
                2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                _ => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&h[2..10]);
                    u64::from_be_bytes(b)
                }
            };
            if h[0] & 0x0f == 0x8 {
                self.saw_close = true;
            }
            if h[0] & 0x70 != 0 && h[0] & 0x0f > 0xa {
                self.lost = true;
            }
            self.skip = len;
            self.head.clear();
        }
    }
}

/// A close frame with status 1001 (Going Away). Frames to a server must be masked
/// (RFC 6455 §5.3); frames to a client must not be.
fn going_away(to_server: bool) -> Vec<u8> {
    let code = 1001u16.to_be_bytes();
    if to_server {
        let mask = [0x5a, 0x17, 0xc3, 0x2e];
        vec![
            0x88,
            0x82,
            mask[0],
            mask[1],
            mask[2],
            mask[3],
            code[0] ^ mask[0],
            code[1] ^ mask[1],
        ]
    } else {
        vec![0x88, 0x02, code[0], code[1]]
    }
}

impl portico_core::relay::Watch for FrameScanner {
    fn feed(&mut self, data: &[u8]) {
        FrameScanner::feed(self, data);
    }

    /// An upstream that hangs up without a close frame died mid-stream.
    fn clean_end(&self) -> bool {
        self.saw_close || self.lost
    }
}

/// Relays `client` ⇄ `upstream` until both close, one fails, or a limit ends it.
pub async fn tunnel<C, U>(
    client: C,
    upstream: U,
    limits: TunnelLimits,
    shutdown: CancellationToken,
) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    use portico_core::relay::{relay, Goodbye};
    let goodbye = Goodbye {
        to_client: going_away(false),
        to_upstream: going_away(true),
    };
    let mut frames = FrameScanner::default();
    relay(client, upstream, limits, shutdown, &mut frames, goodbye).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::duplex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> TunnelLimits {
        TunnelLimits {
            idle: Duration::from_secs(3600),
            max_lifetime: Duration::ZERO,
            drain: Duration::ZERO,
        }
    }

    #[test]
    fn the_scanner_finds_close_frames_across_reads() {
        // text "hi", a 300-byte binary frame (16-bit length), then close 1000
        let mut stream = vec![0x81, 0x02, b'h', b'i', 0x82, 126, 0x01, 0x2c];
        stream.extend(std::iter::repeat_n(0u8, 300));
        stream.extend([0x88, 0x02, 0x03, 0xe8]);
        for cut in 0..stream.len() {
            let mut s = FrameScanner::default();
            s.feed(&stream[..cut]);
            assert!(!s.saw_close || cut > stream.len() - 4, "cut {cut}");
            s.feed(&stream[cut..]);
            assert!(s.saw_close, "cut {cut}");
        }
        let mut s = FrameScanner::default();
        s.feed(&[0x82, 0x03, 0x88, 0x02, 0x03]); // "close" bytes inside a payload
        assert!(!s.saw_close);
    }

    #[tokio::test]
    async fn relays_both_ways_and_ends_when_both_close() {
        let (client, mut client_peer) = duplex(1024);
        let (upstream, mut upstream_peer) = duplex(1024);
        let t = tokio::spawn(tunnel(client, upstream, limits(), CancellationToken::new()));
        client_peer.write_all(b"hello up").await.unwrap();
        let mut buf = [0u8; 8];
        upstream_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello up");
        upstream_peer.write_all(&[0x81, 0x06]).await.unwrap();
        upstream_peer.write_all(b"hi dn!").await.unwrap();
        client_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"\x81\x06hi dn!");
        // the upstream closes properly: close frame, then end of stream
        upstream_peer.write_all(&[0x88, 0x00]).await.unwrap();
        let mut close = [0u8; 2];
        client_peer.read_exact(&mut close).await.unwrap();
        drop(client_peer);
        drop(upstream_peer);
        assert_eq!(t.await.unwrap(), TunnelEnd::Closed);
    }

    #[tokio::test]
    async fn an_upstream_hanging_up_without_close_is_an_error() {
        let (client, _client_peer) = duplex(1024);
        let (upstream, upstream_peer) = duplex(1024);
        let t = tokio::spawn(tunnel(client, upstream, limits(), CancellationToken::new()));
        drop(upstream_peer);
        assert_eq!(t.await.unwrap(), TunnelEnd::UpstreamError);
    }

    #[tokio::test]
    async fn shutdown_sends_going_away_to_both() {
        let (client, mut client_peer) = duplex(1024);
        let (upstream, mut upstream_peer) = duplex(1024);
        let stop = CancellationToken::new();
        let t = tokio::spawn(tunnel(client, upstream, limits(), stop.clone()));
        stop.cancel();
        assert_eq!(t.await.unwrap(), TunnelEnd::Shutdown);
        let mut to_client = Vec::new();
        client_peer.read_to_end(&mut to_client).await.unwrap();
        assert_eq!(to_client, vec![0x88, 0x02, 0x03, 0xe9]);
        let mut to_server = Vec::new();
        upstream_peer.read_to_end(&mut to_server).await.unwrap();
        assert_eq!(to_server[..2], [0x88, 0x82], "masked close frame");
        let m = &to_server[2..6];
        assert_eq!([to_server[6] ^ m[0], to_server[7] ^ m[1]], [0x03, 0xe9]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_lifetime_end_the_tunnel() {
        let (client, _c) = duplex(1024);
        let (upstream, _u) = duplex(1024);
        let mut l = limits();
        l.idle = Duration::from_secs(5);
        assert_eq!(
            tunnel(client, upstream, l, CancellationToken::new()).await,
            TunnelEnd::Idle
        );
        let (client, mut c) = duplex(1024);
        let (upstream, _u) = duplex(1024);
        let mut l = limits();
        l.max_lifetime = Duration::from_secs(5);
        let keep_busy = tokio::spawn(async move {
            loop {
                if c.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        assert_eq!(
            tunnel(client, upstream, l, CancellationToken::new()).await,
            TunnelEnd::Lifetime
        );
        keep_busy.abort();
    }
}
