//! For bench/run: opens N signed-in WebSockets through Portcullis (TLS), reports when they are
//! all open, waits for a line on stdin (the script measures memory meanwhile), then has the
//! first M of them echo messages and prints the round-trip percentiles as one line of JSON.
//!
//! usage: ws_load ADDR HOST COOKIE N M ROUNDS

use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, host, cookie, n, m, rounds] = args.as_slice() else {
        return Err("usage: ws_load ADDR HOST COOKIE N M ROUNDS".into());
    };
    let (n, m, rounds): (usize, usize, usize) = (n.parse()?, m.parse()?, rounds.parse()?);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(portcullis::upstream::NoVerify(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let mut sockets = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
        let name = rustls_pki_types::ServerName::try_from(host.clone())?;
        let tls = connector.connect(name, tcp).await?;
        let mut req = format!("wss://{host}/ws/{i}").into_client_request()?;
        req.headers_mut().insert("cookie", cookie.parse()?);
        req.headers_mut()
            .insert("origin", format!("https://{host}").parse()?);
        let (ws, _) = tokio_tungstenite::client_async(req, tls).await?;
        sockets.push(ws);
    }
    println!("open {n} {:.1}s", started.elapsed().as_secs_f64());
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    let active: Vec<_> = sockets.drain(..m.min(n)).collect();
    let tasks: Vec<_> = active
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut rtts = Vec::with_capacity(rounds);
                for r in 0..rounds {
                    let t = Instant::now();
                    if ws.send(Message::text(format!("ping {r}"))).await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                        Ok(Some(Ok(_))) => rtts.push(t.elapsed().as_micros() as u64),
                        _ => break,
                    }
                }
                rtts
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"round_trips\": {}, \"p50_us\": {}, \"p99_us\": {}}}",
        all.len(),
        pct(0.50),
        pct(0.99)
    );
    drop(sockets);
    Ok(())
}
