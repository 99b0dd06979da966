//! `portcullis tcp HOST:PORT`: the client of TCP routes. It opens a TLS connection to
//! Portcullis, sends `CONNECT HOST:PORT` with its session (`Proxy-Authorization: Portcullis
//! TOKEN`), and relays stdin/stdout (ssh's `ProxyCommand`) or each connection accepted on
//! `--listen`. Without a session (a 407) it signs in as a command-line client should: it
//! prints (and, on a desktop, opens) `https://HOST/.portcullis/cli?port=N&state=S&challenge=C`,
//! where the user signs in and confirms; a short-lived code comes back on a loopback redirect
//! to port N, which it redeems with its PKCE verifier in the next CONNECT for a session to keep in
//! the user's config directory (0600), reused until it expires.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::auth::session::pkce_challenge;
use crate::upstream::tls::default_roots;

/// Options of `portcullis tcp`.
#[derive(clap::Args, Debug)]
pub struct TcpArgs {
    /// The TCP route's host and port, as its `from: tcp+https://HOST:PORT` names them.
    pub target: String,
    /// Accept connections here (as `127.0.0.1:2222`) and tunnel each, rather than relay
    /// stdin and stdout.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Portcullis's URL (default `https://HOST`): where to connect and sign in.
    #[arg(long)]
    pub proxy: Option<String>,
    /// Connect to this address instead of the proxy URL's host (its name is still what TLS
    /// verifies).
    #[arg(long)]
    pub connect: Option<String>,
    /// A PEM file of CA certificates Portcullis's certificate is checked against (besides
    /// the system's).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Where sessions are kept (default: `$XDG_CONFIG_HOME/portcullis/sessions` or
    /// `~/.config/portcullis/sessions`).
    #[arg(long, env = "PORTCULLIS_SESSION_DIR")]
    pub session_dir: Option<PathBuf>,
    /// Print the sign-in URL but do not open a browser.
    #[arg(long)]
    pub no_browser: bool,
}

/// How long a sign-in may take before `portcullis tcp` gives up.
const SIGN_IN_WAIT: Duration = Duration::from_secs(300);
/// The largest response head accepted from Portcullis (or the loopback request).
const MAX_HEAD: usize = 64 * 1024;

pub fn run(args: TcpArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis tcp: {e}");
            return ExitCode::from(1);
        }
    };
    let r = rt.block_on(main(args));
    // A read of stdin may still be waiting in a blocking thread: not waited for.
    rt.shutdown_background();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis tcp: {e}");
            ExitCode::from(1)
        }
    }
}

/// Everything a tunnel needs, made once.
struct Client {
    target: String,
    proxy: url::Url,
    server_name: ServerName<'static>,
    dial: String,
    tls: TlsConnector,
    token_file: PathBuf,
    no_browser: bool,
}

async fn main(args: TcpArgs) -> Result<(), String> {
    let c = Arc::new(Client::new(&args)?);
    match args.listen {
        None => {
            let mut io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
            c.tunnel(&mut io).await
        }
        Some(addr) => {
            // Whoever connects is let through as the signed-in user: this machine's own.
            if !addr.ip().is_loopback() {
                return Err(format!("--listen {addr}: only a loopback address (127.0.0.1, ::1); every connection on it is let through as you"));
            }
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            eprintln!("portcullis tcp: {} on {}", c.target, local(&l));
            // The first connection signs in if needed; the others wait for it.
            let lock = Arc::new(tokio::sync::Mutex::new(()));
            loop {
                let (mut s, peer) = l.accept().await.map_err(|e| e.to_string())?;
                let (c, lock) = (c.clone(), lock.clone());
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    if let Err(e) = c.tunnel_after(&mut s, &lock).await {
                        eprintln!("portcullis tcp: {peer}: {e}");
                    }
                });
            }
        }
    }
}

fn local(l: &TcpListener) -> String {
    l.local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string())
}

impl Client {
    fn new(args: &TcpArgs) -> Result<Client, String> {
        let (host, port) = args
            .target
            .rsplit_once(':')
            .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            .ok_or_else(|| {
                format!(
                    "`{}`: give HOST:PORT, as in ssh.example.com:22",
                    args.target
                )
            })?;
        let _ = port;
        let proxy = args
            .proxy
            .clone()
            .unwrap_or_else(|| format!("https://{host}"));
        let proxy = url::Url::parse(&proxy).map_err(|e| format!("--proxy {proxy}: {e}"))?;
        if proxy.scheme() != "https" {
            return Err(format!("--proxy {proxy}: Portcullis is reached over https"));
        }
        let proxy_host = proxy
            .host_str()
            .ok_or_else(|| format!("--proxy {proxy}: no host"))?
            .to_string();
        let server_name = ServerName::try_from(proxy_host.trim_matches(['[', ']']).to_string())
            .map_err(|e| format!("--proxy {proxy}: {e}"))?;
        let dial = args.connect.clone().unwrap_or_else(|| {
            format!(
                "{proxy_host}:{}",
                proxy.port_or_known_default().unwrap_or(443)
            )
        });
        let mut roots = RootCertStore::clone(&default_roots());
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            let mut n = 0;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("--ca {}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
                n += 1;
            }
            if n == 0 {
                return Err(format!("--ca {}: no certificate in it", ca.display()));
            }
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let dir = match &args.session_dir {
            Some(d) => d.clone(),
            None => default_session_dir()?,
        };
        let file = format!(
            "{}.token",
            proxy.host_str().unwrap_or("portcullis").replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_"
            )
        );
        Ok(Client {
            target: args.target.clone(),
            proxy,
            server_name,
            dial,
            tls: TlsConnector::from(Arc::new(config)),
            token_file: dir.join(file),
            no_browser: args.no_browser,
        })
    }

    /// One tunnel for `io`, signing in first when Portcullis asks for it.
    async fn tunnel<S>(&self, io: &mut S) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let lock = tokio::sync::Mutex::new(());
        self.tunnel_after(io, &lock).await
    }

    async fn tunnel_after<S>(&self, io: &mut S, lock: &tokio::sync::Mutex<()>) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut conn, early) = {
            let _one_sign_in = lock.lock().await;
            let token = read_token(&self.token_file);
            match self.open(token.map(|t| format!("Portcullis {t}"))).await? {
                Opened::Tunnel(conn, early) => (conn, early),
                Opened::SignIn => {
                    let signed_in = self.sign_in().await?;
                    let code = format!("Portcullis-Code {} {}", signed_in.code, signed_in.verifier);
                    match self.open(Some(code)).await? {
                        Opened::Tunnel(conn, early) => (conn, early),
                        Opened::SignIn => {
                            return Err("signed in, and still asked to sign in: is this the host the sign-in page was on?".into())
                        }
                    }
                }
            }
        };
        io.write_all(&early).await.map_err(|e| e.to_string())?;
        io.flush().await.map_err(|e| e.to_string())?;
        pipe(io, &mut conn).await;
        Ok(())
    }

    /// Sends the CONNECT; a `200` is a tunnel (and whatever the target sent already).
    async fn open(&self, credential: Option<String>) -> Result<Opened, String> {
        let tcp = TcpStream::connect(&self.dial)
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.dial))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS to {}: {e}", self.proxy))?;
        let mut head = format!(
            "CONNECT {t} HTTP/1.1\r\nHost: {t}\r\nAccept: application/json\r\nUser-Agent: portcullis-tcp/{v}\r\n",
            t = self.target,
            v = env!("CARGO_PKG_VERSION")
        );
        if let Some(c) = &credential {
            head.push_str(&format!("Proxy-Authorization: {c}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let (resp, rest) = read_head(&mut tls).await?;
        let status = resp.status;
        if status == 200 {
            if let Some(fresh) = resp.header("portcullis-session") {
                write_token(&self.token_file, fresh)?;
            }
            return Ok(Opened::Tunnel(Box::new(tls), rest));
        }
        if status == 407 {
            return Ok(Opened::SignIn);
        }
        // The error page, JSON: its message says why.
        let len = resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_HEAD);
        let mut body = rest;
        while body.len() < len {
            let mut buf = [0u8; 4096];
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        // Printed on a terminal: no control characters (escape sequences) from the server.
        let message: String = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect();
        Err(
            format!("{} refused {}: {status} {message}", self.proxy, self.target)
                .trim_end()
                .to_string(),
        )
    }

    /// The browser sign-in: a short-lived code arrives on a loopback redirect, which only this
    /// process, holding the PKCE verifier, can redeem (in its next CONNECT).
    async fn sign_in(&self) -> Result<SignedIn, String> {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen on loopback for the sign-in: {e}"))?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let state = random_string()?;
        let verifier = random_string()?;
        let mut url = self.proxy.clone();
        url.set_path(crate::paths::CLI);
        url.query_pairs_mut()
            .append_pair("port", &port.to_string())
            .append_pair("state", &state)
            .append_pair("challenge", &pkce_challenge(&verifier));
        eprintln!("portcullis tcp: sign in at {url}");
        let _ = std::io::stderr().flush();
        if !self.no_browser {
            open_browser(url.as_str());
        }
        let code = tokio::time::timeout(SIGN_IN_WAIT, receive(&l, &state))
            .await
            .map_err(|_| "no sign-in within 5 minutes".to_string())??;
        Ok(SignedIn { code, verifier })
    }
}

/// Relays until Portcullis ends the tunnel (the target closed, or access ended: then the
/// local side must learn at once, even while it still has things to send). The local side's
/// end is passed on as a half-close, and the target's answer still read.
async fn pipe<L, R>(local: &mut L, remote: &mut R)
where
    L: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    let (mut lr, mut lw) = tokio::io::split(local);
    let (mut rr, mut rw) = tokio::io::split(remote);
    let down = async {
        let _ = tokio::io::copy(&mut rr, &mut lw).await;
        let _ = lw.flush().await;
    };
    let up = async {
        let _ = tokio::io::copy(&mut lr, &mut rw).await;
        let _ = rw.shutdown().await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}

/// What the loopback redirect brought, and the verifier that redeems it.
struct SignedIn {
    code: String,
    verifier: String,
}

enum Opened {
    Tunnel(Box<tokio_rustls::client::TlsStream<TcpStream>>, Vec<u8>),
    SignIn,
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a response head; returns it and the bytes read past it.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Head, Vec<u8>), String> {
    let (head, rest) = read_to_blank_line(r)
        .await
        .map_err(|e| format!("Portcullis's answer: {e}"))?
        .ok_or("Portcullis closed the connection without answering")?;
    Ok((parse_head(&head)?, rest))
}

/// Bytes up to the blank line that ends an HTTP head, and those read past it; `None` when the
/// peer closed first. Refused past [`MAX_HEAD`].
async fn read_to_blank_line<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, String> {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let rest = buf[end + 4..].to_vec();
            buf.truncate(end);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Err("a head over 64 KiB".into());
        }
        let mut chunk = [0u8; 4096];
        let n = r.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_head(raw: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "a malformed answer".to_string())?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| {
            let mut p = l.split(' ');
            (p.next()?.starts_with("HTTP/1.")).then_some(())?;
            p.next()?.parse::<u16>().ok()
        })
        .ok_or_else(|| "a malformed answer".to_string())?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Head { status, headers })
}

/// Waits for the browser's `GET /?state=S&code=C` on the loopback listener; other
/// requests (a favicon, a wrong state) are answered and waited past.
async fn receive(l: &TcpListener, state: &str) -> Result<String, String> {
    loop {
        let (mut s, _) = l.accept().await.map_err(|e| e.to_string())?;
        let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(10), read_request_line(&mut s)).await
        else {
            continue;
        };
        let query = line
            .split(' ')
            .nth(1)
            .and_then(|t| t.split_once('?'))
            .map_or("", |(_, q)| q);
        let mut got_state = None;
        let mut code = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "state" => got_state = Some(v.into_owned()),
                "code" => code = Some(v.into_owned()),
                _ => {}
            }
        }
        let ok = got_state.as_deref() == Some(state) && code.is_some();
        let (status, text) = if ok {
            (
                "200 OK",
                "Signed in. You can close this tab and go back to the terminal.",
            )
        } else {
            (
                "400 Bad Request",
                "This is not the sign-in portcullis tcp is waiting for.",
            )
        };
        let body = format!(
            "<!doctype html><meta charset=\"utf-8\"><title>portcullis tcp</title><p>{text}</p>"
        );
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
        if ok {
            if let Some(c) = code {
                return Ok(c);
            }
        }
    }
}

/// The request line of a request head (the rest is not needed).
async fn read_request_line(s: &mut TcpStream) -> Option<String> {
    let (head, _) = read_to_blank_line(s).await.ok()??;
    let head = String::from_utf8_lossy(&head);
    Some(head.lines().next().unwrap_or_default().to_string())
}

/// 32 random bytes, base64url: a `state`, or a PKCE verifier (RFC 7636: 43 characters).
fn random_string() -> Result<String, String> {
    use base64::Engine;
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| "no randomness available".to_string())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// On a desktop (a display is set), the user's browser; otherwise the printed URL is all.
fn open_browser(url: &str) {
    let desktop = std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some()
        || cfg!(target_os = "macos");
    if !desktop {
        return;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

fn default_session_dir() -> Result<PathBuf, String> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .ok_or("no HOME: pass --session-dir")?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(base.join("portcullis").join("sessions"))
}

fn read_token(file: &Path) -> Option<String> {
    let t = std::fs::read_to_string(file).ok()?;
    let t = t.trim();
    (!t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic())).then(|| t.to_string())
}

/// Writes the session readable by its owner only: in a directory that is theirs alone
/// (made 0700; an existing one others can write to or that belongs to someone else is
/// refused), through a new file of a random name, renamed over the
/// old one.
fn write_token(file: &Path, token: &str) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    // `create_new` is O_CREAT|O_EXCL: it never opens an existing file or follows a link.
    let dir = file.parent().ok_or("no session directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", random_string()?));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let written = (|| {
        let d = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
        let mine = f.metadata().map_err(|e| e.to_string())?.uid();
        if !d.is_dir() || d.uid() != mine || d.mode() & 0o022 != 0 {
            return Err(format!(
                "{}: the session directory must be yours and writable by you alone",
                dir.display()
            ));
        }
        f.write_all(token.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, file).map_err(|e| e.to_string())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| format!("{}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::parse_head;

    #[test]
    fn response_heads_are_read_and_bad_ones_refused() {
        let h = parse_head(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 12\r\nX: a:b",
        )
        .unwrap();
        assert_eq!(h.status, 407);
        assert_eq!(h.header("content-length"), Some("12"));
        assert_eq!(h.header("x"), Some("a:b"));
        for bad in [&b"SSH-2.0-OpenSSH"[..], b"HTTP/1.1 abc", b"\xff\xfe", b""] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
    }
}
