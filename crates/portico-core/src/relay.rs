//! Relaying two connections both ways once a protocol module is done with its
//! handshake (a WebSocket upgrade, a mail login): bounded buffers (512 bytes while quiet,
//! 64 KiB while busy; a direction reads again only after its last read was written), half
//! closes passed on, an idle timeout, an optional maximum lifetime, and a drain on
//! shutdown. What the bytes mean is the module's: it may watch the upstream direction
//! ([`Watch`]) and say goodbye in its protocol when a limit ends the relay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Each direction moves at most this much at a time while busy…
const BUF: usize = 64 * 1024;
/// …and reads into this little while quiet, so an idle relay holds almost no memory.
const SMALL: usize = 512;

/// Limits of one relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// No byte either way for this long ends the relay.
    pub idle: Duration,
    /// The relay ends after this long whatever happens; zero = never.
    pub max_lifetime: Duration,
    /// After shutdown begins, open relays go on this long, then end.
    pub drain: Duration,
}

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed.
    Closed,
    /// The client's connection failed.
    ClientError,
    /// The upstream's connection failed, or it closed in a way its [`Watch`] calls
    /// unclean: count it against the server.
    UpstreamError,
    Idle,
    Lifetime,
    Shutdown,
}

/// Watches the bytes the upstream sends (never changing them), to tell a clean end of
/// the upstream's side from a dying server.
pub trait Watch: Send {
    fn feed(&mut self, data: &[u8]);
    /// Called when the upstream closes: false makes it an [`RelayEnd::UpstreamError`].
    fn clean_end(&self) -> bool;
}

/// A watch for protocols where any close is a clean one.
#[derive(Debug, Default)]
pub struct AnyEnd;

impl Watch for AnyEnd {
    fn feed(&mut self, _: &[u8]) {}
    fn clean_end(&self) -> bool {
        true
    }
}

/// What to send each side when a limit (idle, lifetime, shutdown) ends the relay.
#[derive(Debug, Clone, Default)]
pub struct Goodbye {
    pub to_client: Vec<u8>,
    pub to_upstream: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    last: &AtomicU64,
    start: Instant,
    side: Side,
    mut watch: Option<&mut dyn Watch>,
) -> Result<u64, Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut small = [0u8; SMALL];
    let mut big: Option<Vec<u8>> = None;
    let mut total = 0u64;
    loop {
        let read = match big.as_mut() {
            Some(b) => from.read(b).await,
            None => from.read(&mut small).await,
        };
        let n = match read {
            Ok(0) => {
                // Half-close: tell the other side, keep the other direction going.
                let _ = to.shutdown().await;
                if watch.as_ref().is_some_and(|w| !w.clean_end()) {
                    return Err(side);
                }
                return Ok(total);
            }
            Ok(n) => n,
            Err(_) => return Err(side),
        };
        let data = match big.as_ref() {
            Some(b) => &b[..n],
            None => &small[..n],
        };
        if let Some(w) = watch.as_mut() {
            w.feed(data);
        }
        if to.write_all(data).await.is_err() {
            return Err(match side {
                Side::Client => Side::Upstream,
                Side::Upstream => Side::Client,
            });
        }
        // Grow while reads fill the buffer; shrink back once traffic is light again.
        match big {
            None if n == SMALL => big = Some(vec![0u8; BUF]),
            Some(_) if n < SMALL => big = None,
            _ => {}
        }
        total += n as u64;
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Relays `client` ⇄ `upstream` until both close, one fails, or a limit ends it (then
/// `goodbye` is sent, bounded by a second, and both are shut down).
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    limits: RelayLimits,
    shutdown: CancellationToken,
    watch: &mut dyn Watch,
    goodbye: Goodbye,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let lifetime = async {
        if limits.max_lifetime.is_zero() {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(limits.max_lifetime).await
        }
    };
    let idle = async {
        loop {
            let seen = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + seen + limits.idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let drained = async {
        shutdown.cancelled().await;
        tokio::time::sleep(limits.drain).await;
    };
    let end = {
        let both = async {
            tokio::try_join!(
                pump(&mut cr, &mut uw, &last, start, Side::Client, None),
                pump(&mut ur, &mut cw, &last, start, Side::Upstream, Some(watch))
            )
        };
        tokio::select! {
            r = both => match r {
                Ok(_) => return RelayEnd::Closed,
                Err(Side::Client) => return RelayEnd::ClientError,
                Err(Side::Upstream) => return RelayEnd::UpstreamError,
            },
            _ = idle => RelayEnd::Idle,
            _ = lifetime => RelayEnd::Lifetime,
            _ = drained => RelayEnd::Shutdown,
        }
    };
    // Say goodbye on both sides, bounded so a peer that stopped reading cannot hold us.
    let bye = async {
        if !goodbye.to_client.is_empty() {
            let _ = cw.write_all(&goodbye.to_client).await;
        }
        if !goodbye.to_upstream.is_empty() {
            let _ = uw.write_all(&goodbye.to_upstream).await;
        }
        let _ = cw.shutdown().await;
        let _ = uw.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
    end
}
