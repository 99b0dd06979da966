//! Accept loop: TCP → (TLS, certificate by SNI) → hyper's HTTP/1.1 + HTTP/2 server with
//! upgrades, with header-read, handshake and idle timeouts, and a bounded drain on shutdown.

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use super::DRAIN_DEADLINE;
use crate::config::settings::Settings;
use crate::proxy::handle::handle;
use crate::proxy::state::{ConnInfo, Shared};
use crate::workers::Workers;

/// Request-size and timing limits for client connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub handshake_timeout: Duration,
    /// Open connections in all (`max_connections`).
    pub max_connections: usize,
    /// Open connections from one client address (`max_connections_per_ip`).
    pub max_connections_per_ip: usize,
}

impl From<&Settings> for Limits {
    fn from(s: &Settings) -> Self {
        Limits {
            header_read_timeout: s.timeout_read_header,
            idle_timeout: s.timeout_idle,
            max_header_bytes: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_connections: s.max_connections,
            max_connections_per_ip: s.max_connections_per_ip,
        }
    }
}

/// Serves certificates from whatever runtime is current, so a reload can change them.
#[derive(Debug)]
pub struct LiveResolver(pub Arc<Shared>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl ResolvesServerCert for LiveResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let rt = self.0.runtime.load();
        let certs = rt.certs.as_ref()?;
        let name = hello.server_name().map(crate::tls::normalize_sni);
        let acme = name.as_deref().and_then(|n| self.0.acme.get(n));
        if crate::tls::acme::is_challenge(&hello) {
            return acme?.resolve(hello);
        }
        if let Some(k) = name.as_deref().and_then(|n| certs.covering(n)) {
            return Some(k);
        }
        acme.and_then(|a| a.resolve(hello))
            .or_else(|| Some(certs.fallback()))
    }
}

/// Counts live connections, in all and per client address: shutdown waits for them, and the
/// caps refuse new ones beyond `max_connections` / `max_connections_per_ip`.
#[derive(Default)]
struct Tracker {
    live: AtomicUsize,
    idle: Notify,
    per_ip: std::sync::Mutex<HashMap<IpAddr, usize>>,
    /// `portcullis_connections_open`.
    gauge: prometheus_client::metrics::gauge::Gauge,
}

struct Live(Arc<Tracker>, IpAddr);

impl Tracker {
    /// Counts a new connection from `ip`, or `None` when a cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Option<Live> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_ip
            || self.live.load(Ordering::Acquire) >= limits.max_connections
        {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        self.live.fetch_add(1, Ordering::AcqRel);
        self.gauge.inc();
        Some(Live(self.clone(), ip))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        {
            let mut per_ip = self.0.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per_ip.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&self.1);
                }
            }
        }
        self.0.gauge.dec();
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The client address a cap counts: IPv4-mapped IPv6 as IPv4, and an IPv6 client by its /64
/// (one host commonly holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// The sockets the main port listens on: one per worker where the kernel balances new
/// connections between sockets sharing a port (Linux's `SO_REUSEPORT`), else one.
pub struct Listeners {
    /// The bound address (the port chosen, when asked for port 0).
    pub addr: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

/// Binds `addr` for `n` workers.
///
/// A plain bind comes first and must succeed on its own: it fails if anything holds the
/// address, another Portcullis's shared sockets included, so two instances never split one
/// port between them. Only then are the `n` shared sockets bound, on the port it got. Each
/// worker accepting from a socket of its own costs about a third less CPU per new TLS
/// connection than one accept loop handing sockets to the workers (docs/performance.md), and the
/// kernel spreads connections over the sockets by their addresses, so a burst of new
/// connections is shared out rather than taken by whichever worker wakes first.
pub fn bind(addr: SocketAddr, n: usize) -> io::Result<Listeners> {
    let mut attempts = 0;
    loop {
        let alone = std::net::TcpListener::bind(addr)?;
        let local = alone.local_addr()?;
        if n <= 1 || !SHARED_PORTS {
            alone.set_nonblocking(true)?;
            return Ok(Listeners {
                addr: local,
                sockets: vec![alone],
            });
        }
        drop(alone);
        match (0..n).map(|_| shared_socket(local)).collect() {
            Ok(sockets) => {
                return Ok(Listeners {
                    addr: local,
                    sockets,
                })
            }
            // Port 0: another bind took the port between the two steps; choose again.
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && attempts < 5 => {
                attempts += 1
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether this OS balances connections between sockets sharing a port.
const SHARED_PORTS: bool = cfg!(target_os = "linux");

#[cfg(target_os = "linux")]
fn shared_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

#[cfg(not(target_os = "linux"))]
fn shared_socket(_: SocketAddr) -> io::Result<std::net::TcpListener> {
    Err(io::ErrorKind::Unsupported.into())
}

/// One accept loop's share of the listener's state.
#[derive(Clone)]
struct Accept {
    tracker: Arc<Tracker>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
}

impl Accept {
    /// Accepts until shutdown. `deal`: hand each connection to the next worker; otherwise it
    /// is served on this (worker's) runtime.
    async fn run(mut self, listener: TcpListener, deal: bool) {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = self.shutdown.changed() => break,
            };
            let Some(live) = self.tracker.admit(client_key(peer.ip()), &self.limits) else {
                // Over a cap: close at once (RST-free; the client sees the connection end).
                self.shared.metrics.connection_refused();
                tracing::debug!(%peer, "connection refused: connection cap reached");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, shared, shutdown) = (
                self.acceptor.clone(),
                self.shared.clone(),
                self.shutdown.clone(),
            );
            let limits = self.limits;
            if !deal {
                tokio::spawn(async move {
                    connection(tcp, peer, live, acceptor, shared, limits, shutdown).await;
                });
                continue;
            }
            // The socket moves to a worker's runtime: it leaves this reactor and joins the
            // worker's.
            let tcp = match tcp.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "cannot hand the connection to a worker");
                    continue;
                }
            };
            Workers::global().spawn(async move {
                match TcpStream::from_std(tcp) {
                    Ok(tcp) => {
                        connection(tcp, peer, live, acceptor, shared, limits, shutdown).await
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "cannot register the connection"),
                }
            });
        }
    }
}

/// Serves the main port until shutdown, then drains: with a socket per worker, each worker
/// accepts and serves its own connections; with one socket, this runtime accepts and deals
/// them round-robin.
pub async fn serve(
    listeners: Listeners,
    tls: Option<Arc<ServerConfig>>,
    shared: Arc<Shared>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let tracker = Arc::new(Tracker {
        gauge: shared.metrics.connections_gauge(),
        ..Tracker::default()
    });
    let accept = Accept {
        tracker: tracker.clone(),
        acceptor: tls.map(tokio_rustls::TlsAcceptor::from),
        shared,
        limits,
        shutdown: shutdown.clone(),
    };
    let workers = Workers::global();
    let mut sockets = listeners.sockets;
    // `bind` made one socket per worker, or a single one for several workers (no shared
    // ports on this OS) or for none.
    if !workers.is_empty() && sockets.len() == workers.len() {
        let loops: Vec<_> = sockets
            .drain(..)
            .enumerate()
            .map(|(i, socket)| {
                let accept = accept.clone();
                workers.spawn_on(i, async move {
                    // Registered with this worker's reactor. Were that to fail, the socket
                    // closes and leaves the port's group: the kernel sends its share of
                    // connections to the other workers' sockets.
                    match TcpListener::from_std(socket) {
                        Ok(l) => accept.run(l, false).await,
                        Err(e) => tracing::error!(error = %e, "a worker cannot accept connections"),
                    }
                })
            })
            .collect();
        drop(accept);
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        // Every socket is closed once its loop has ended: the port is free again.
        for l in loops {
            let _ = l.await;
        }
    } else if let Some(socket) = sockets.pop() {
        match TcpListener::from_std(socket) {
            Ok(l) => accept.run(l, !workers.is_empty()).await,
            Err(e) => tracing::error!(error = %e, "cannot accept connections"),
        }
    }
    // Drain: wait for connections to finish, at most DRAIN_DEADLINE.
    let wait = async {
        loop {
            let notified = tracker.idle.notified();
            if tracker.live.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(DRAIN_DEADLINE, wait).await.is_err() {
        tracing::warn!(
            open = tracker.live.load(Ordering::Acquire),
            "drain deadline passed; closing the remaining connections"
        );
    }
}

/// Serves one connection. `live` counts it under the connection caps until the last thing
/// serving it ends: it rides in the `ConnInfo`, which an upgraded WebSocket or TCP tunnel keeps
/// after the HTTP connection has handed its bytes over.
async fn connection(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    live: Live,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(AtomicU64::new(0));
    match acceptor {
        None => {
            let info = ConnInfo::new(peer, None, false).holding(live);
            let io = IdleIo {
                inner: tcp,
                moves: activity.clone(),
            };
            serve_http(io, info, shared, limits, shutdown, activity).await;
        }
        Some(acc) => {
            let tls = match tokio::time::timeout(limits.handshake_timeout, acc.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            if tls.get_ref().1.alpn_protocol() == Some(crate::tls::acme::ACME_TLS_ALPN) {
                // A TLS-ALPN-01 validation: the handshake was the whole exchange.
                let mut tls = tls;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                return;
            }
            let sni = tls
                .get_ref()
                .1
                .server_name()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
            let info = ConnInfo::new(peer, sni, true).holding(live);
            let io = IdleIo {
                inner: tls,
                moves: activity.clone(),
            };
            serve_http(io, info, shared, limits, shutdown, activity).await;
        }
    }
}

async fn serve_http<I>(
    io: I,
    info: ConnInfo,
    shared: Arc<Shared>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    activity: Arc<AtomicU64>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        // One buffer per response, so headers and a small body leave in one TLS record and
        // one write (docs/performance.md).
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(250)
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let svc = service_fn(move |req| handle(shared.clone(), info.clone(), req));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    let idle = limits.idle_timeout;
    let tick = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
    let mut closing = false;
    // Quiet for `idle`: no bytes moved over that many ticks in a row (so between `idle` and
    // `idle + tick` after the last byte).
    let mut seen = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(tick), if !closing && !idle.is_zero() => {
                let now = activity.load(Ordering::Relaxed);
                if now == seen {
                    quiet += tick;
                } else {
                    (seen, quiet) = (now, Duration::ZERO);
                }
                if quiet >= idle {
                    // In-flight responses still finish: a graceful shutdown only stops new requests.
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Counts the reads and writes that moved bytes on a connection (the connection's idle check
/// compares the count at each tick: no clock read per request).
struct IdleIo<T> {
    inner: T,
    moves: Arc<AtomicU64>,
}

impl<T> IdleIo<T> {
    fn touch(&self) {
        // Only this connection's task writes it: a load and a store, no locked instruction.
        let n = self.moves.load(Ordering::Relaxed);
        self.moves.store(n.wrapping_add(1), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Connects `n` times to `addr` and counts, per socket, the connections it accepted.
    fn spread(sockets: &[std::net::TcpListener], n: usize) -> Vec<usize> {
        let addr = sockets[0].local_addr().expect("bound");
        let clients: Vec<_> = (0..n)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let mut accepted = vec![0; sockets.len()];
        let deadline = Instant::now() + Duration::from_secs(5);
        while accepted.iter().sum::<usize>() < n && Instant::now() < deadline {
            for (i, s) in sockets.iter().enumerate() {
                while s.accept().is_ok() {
                    accepted[i] += 1;
                }
            }
        }
        drop(clients);
        accepted
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn each_worker_gets_a_socket_on_one_port_and_a_share_of_a_burst() {
        let l = bind("127.0.0.1:0".parse().expect("addr"), 2).expect("bind");
        assert_eq!(l.sockets.len(), 2);
        for s in &l.sockets {
            assert_eq!(s.local_addr().expect("bound"), l.addr);
        }
        let accepted = spread(&l.sockets, 64);
        assert_eq!(accepted.iter().sum::<usize>(), 64, "{accepted:?}");
        assert!(
            accepted.iter().all(|&a| a >= 8),
            "a burst of connections is shared out: {accepted:?}"
        );
    }

    #[test]
    fn a_second_instance_cannot_bind_the_same_port() {
        let l = bind("127.0.0.1:0".parse().expect("addr"), 2).expect("bind");
        for n in [1, 2] {
            let again = bind(l.addr, n).err().map(|e| e.kind());
            assert_eq!(again, Some(io::ErrorKind::AddrInUse), "n = {n}");
        }
        // Closed, the port is free again.
        let addr = l.addr;
        drop(l);
        let l = bind(addr, 2).expect("the port is free once the sockets are closed");
        assert_eq!(l.addr, addr);
    }

    #[test]
    fn a_client_is_counted_by_its_ipv4_address_or_its_ipv6_slash_64() {
        let key = |s: &str| client_key(s.parse().expect("ip"));
        assert_eq!(key("192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        // One host holds a whole /64: its addresses are one client.
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        // An IPv4-mapped address is the IPv4 client.
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
    }

    #[test]
    fn one_worker_gets_one_plain_socket() {
        let l = bind("127.0.0.1:0".parse().expect("addr"), 1).expect("bind");
        assert_eq!(l.sockets.len(), 1);
        assert_eq!(spread(&l.sockets, 4), [4]);
    }
}
