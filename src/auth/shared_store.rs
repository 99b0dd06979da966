//! Revocations shared by several replicas through Redis or Valkey (`session_store:
//! redis://…`), with no network round trip per request.
//!
//! Each replica keeps the revoked session ids in memory (and in its embedded store, so a
//! restart while Redis is away still knows them). A sign-out is recorded locally at once, then
//! written to the sorted set `portcullis:revoked` (member: the id in hex, score: when its cookie
//! would have expired) and published on `portcullis:signed_out`; every replica's subscription
//! adds it to its own copy and closes that session's WebSockets within the round trip. After
//! every (re)connection the replica subscribes first, then reads the whole set again, so
//! nothing published while it was away is missed; sign-outs made while Redis was unreachable
//! are kept and written once it is back. Redis down never stops requests: they go on with the
//! revocations known so far (`portcullis_session_store_up 0`, logged once).

use futures_util::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

use super::revoked::{EmbeddedStore, RevocationStore};
use crate::clock::now;
use crate::config::settings::StoreUrl;

const SET: &str = "portcullis:revoked";
const CHANNEL: &str = "portcullis:signed_out";
/// Connecting and each command; past it the store counts as down.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection that answers nothing for this long is dropped (a silent partition).
const PING_EVERY: Duration = Duration::from_secs(5);

/// The shared store: the embedded store as this replica's copy, Redis behind it.
pub struct SharedStore {
    local: EmbeddedStore,
    writes: mpsc::UnboundedSender<([u8; 16], u64)>,
}

impl RevocationStore for SharedStore {
    fn revoke(&self, id: &[u8; 16], until: u64) -> Result<(), String> {
        // Known here at once (and kept across a restart); Redis follows, now or when back.
        let local = self.local.revoke(id, until);
        let _ = self.writes.send((*id, until));
        local
    }

    fn is_revoked(&self, id: &[u8; 16]) -> bool {
        self.local.is_revoked(id)
    }
}

/// Opens the local copy in `data_dir` and starts keeping it in step with Redis. Remote
/// sign-outs are sent on `signed_out` (open WebSockets of those sessions close); `up` is
/// the `portcullis_session_store_up` gauge.
pub fn start(
    url: &StoreUrl,
    local: EmbeddedStore,
    signed_out: broadcast::Sender<[u8; 16]>,
    up: Gauge,
) -> Result<Arc<SharedStore>, String> {
    let client = redis::Client::open(url.url.as_str()).map_err(|e| e.to_string())?;
    let (writes, rx) = mpsc::unbounded_channel();
    let store = Arc::new(SharedStore { local, writes });
    tokio::spawn(keep_in_step(
        client,
        url.shown.clone(),
        Arc::downgrade(&store),
        rx,
        signed_out,
        up,
    ));
    Ok(store)
}

/// Why a connection to the store ended.
type Failure = String;

/// Connects, subscribes, reads the set again, writes what waits, then follows the channel
/// and writes new sign-outs; on any failure starts over after a pause. Ends with the store.
async fn keep_in_step(
    client: redis::Client,
    shown: String,
    store: std::sync::Weak<SharedStore>,
    mut writes: mpsc::UnboundedReceiver<([u8; 16], u64)>,
    signed_out: broadcast::Sender<[u8; 16]>,
    up: Gauge,
) {
    let mut waiting: Vec<([u8; 16], u64)> = Vec::new();
    let mut was_up: Option<bool> = None;
    let mut pause = Duration::from_millis(200);
    loop {
        if store.strong_count() == 0 {
            return;
        }
        let r = session(
            &client,
            &store,
            &mut writes,
            &mut waiting,
            &signed_out,
            &up,
            &mut was_up,
            &shown,
        )
        .await;
        up.set(0);
        match r {
            Ok(()) => return,
            Err(e) => {
                if was_up != Some(false) {
                    tracing::error!(store = %shown, error = %e, "session store unreachable: requests go on with the sign-outs known so far; sign-outs made meanwhile are kept and written when it is back");
                    was_up = Some(false);
                }
            }
        }
        // Sign-outs made while away wait in `waiting` (and are already known here).
        while let Ok(w) = writes.try_recv() {
            waiting.push(w);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    client: &redis::Client,
    store: &std::sync::Weak<SharedStore>,
    writes: &mut mpsc::UnboundedReceiver<([u8; 16], u64)>,
    waiting: &mut Vec<([u8; 16], u64)>,
    signed_out: &broadcast::Sender<[u8; 16]>,
    up: &Gauge,
    was_up: &mut Option<bool>,
    shown: &str,
) -> Result<(), Failure> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    let mut pubsub = tokio::time::timeout(IO_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "timed out connecting".to_string())?
        .map_err(|e| e.to_string())?;
    // Subscribed before the set is read: a sign-out between the two is in one or the other.
    tokio::time::timeout(IO_TIMEOUT, pubsub.subscribe(CHANNEL))
        .await
        .map_err(|_| "timed out subscribing".to_string())?
        .map_err(|e| e.to_string())?;
    let t = now();
    let _: () = redis::cmd("ZREMRANGEBYSCORE")
        .arg(SET)
        .arg("-inf")
        .arg(t)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let all: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(SET)
        .arg(t)
        .arg("+inf")
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let Some(s) = store.upgrade() else {
        return Ok(());
    };
    let mut learned = 0usize;
    let mut in_store = foldhash::HashSet::default();
    for (hex, until) in all {
        if let Some(id) = parse_id(&hex) {
            in_store.insert(id);
            if !s.local.is_revoked(&id) {
                learned += 1;
                let _ = s.local.revoke(&id, until as u64);
                let _ = signed_out.send(id);
            }
        }
    }
    // What this replica knows and the store lacks (a Redis restarted without its data):
    // written back, so replicas started later learn it too.
    for (id, until) in s.local.live() {
        if !in_store.contains(&id) && !waiting.iter().any(|(w, _)| *w == id) {
            waiting.push((id, until));
        }
    }
    drop(s);
    // What this replica recorded while away (and anything recorded just now).
    while let Ok(w) = writes.try_recv() {
        waiting.push(w);
    }
    let written = waiting.len();
    while let Some(&(id, until)) = waiting.first() {
        write(&mut conn, &id, until).await?;
        waiting.remove(0);
    }
    up.set(1);
    if *was_up != Some(true) {
        tracing::info!(store = %shown, learned, written, "session store reachable: sign-outs shared with the other replicas");
        *was_up = Some(true);
    }
    let mut messages = pubsub.on_message();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            m = messages.next() => {
                let Some(m) = m else { return Err("the subscription ended".into()) };
                let payload: String = m.get_payload().unwrap_or_default();
                let Some((id, until)) = parse_message(&payload) else { continue };
                let Some(s) = store.upgrade() else { return Ok(()) };
                // Our own sign-outs come back too: known already, nothing to close.
                if !s.local.is_revoked(&id) {
                    let _ = s.local.revoke(&id, until);
                    let _ = signed_out.send(id);
                }
            }
            w = writes.recv() => {
                let Some((id, until)) = w else { return Ok(()) };
                if let Err(e) = write(&mut conn, &id, until).await {
                    waiting.push((id, until));
                    return Err(e);
                }
            }
            _ = ping.tick() => {
                let _: String = redis::cmd("PING")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
}

/// Adds one sign-out to the set and tells the other replicas.
async fn write(
    conn: &mut redis::aio::MultiplexedConnection,
    id: &[u8; 16],
    until: u64,
) -> Result<(), Failure> {
    let hex = to_hex(id);
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(SET)
        .arg(until)
        .arg(&hex)
        .ignore()
        .cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(format!("{hex}:{until}"))
        .ignore()
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn to_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_id(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

/// `HEX:UNTIL` as published.
fn parse_message(m: &str) -> Option<([u8; 16], u64)> {
    let (hex, until) = m.split_once(':')?;
    Some((parse_id(hex)?, until.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_messages_round_trip_and_junk_is_ignored() {
        let id = [0xab; 16];
        assert_eq!(parse_id(&to_hex(&id)), Some(id));
        assert_eq!(
            parse_message(&format!("{}:42", to_hex(&id))),
            Some((id, 42))
        );
        for junk in [
            "",
            "zz",
            &"g".repeat(32),
            &format!("{}:x", to_hex(&id)),
            "é".repeat(16).as_str(),
        ] {
            assert_eq!(parse_message(junk), None, "{junk}");
        }
    }
}
