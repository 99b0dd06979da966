//! Listeners: accept, TLS, HTTP/1.1 and HTTP/2, the redirect port, graceful shutdown.

pub mod admin;
pub mod listener;
pub mod redirect;
pub mod reload;
pub mod signals;

use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::state::Shared;
use crate::runtime::Runtime;

/// How long in-flight requests may take to finish after a shutdown signal.
pub const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A running server: its bound addresses and the means to stop it.
pub struct Handle {
    pub addr: SocketAddr,
    pub redirect_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Handle {
    /// Stops accepting, lets in-flight requests finish (bounded by [`DRAIN_DEADLINE`]).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.shared.acme.stop();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Replaces the running configuration (listener addresses stay as they are).
    /// Open WebSockets that the new config refuses are closed.
    pub fn swap(&self, rt: Runtime) {
        if let Some(o) = &rt.auth.oidc {
            o.start();
        }
        rt.sync_acme(&self.shared.acme);
        let rt = Arc::new(rt);
        self.shared.runtime.store(rt.clone());
        let closed = self.shared.sockets.recheck(&rt);
        if closed > 0 {
            tracing::info!(closed, "closed WebSockets the new config no longer allows");
        }
    }
}

/// Binds the listeners named in the runtime's settings and starts serving.
pub async fn start(rt: Runtime) -> std::io::Result<Handle> {
    for w in &rt.warnings {
        tracing::warn!("{w}");
    }
    let settings = rt.settings.clone();
    let local = crate::auth::revoked::EmbeddedStore::open(&settings.data_dir)
        .map_err(std::io::Error::other)?;
    let signed_out = tokio::sync::broadcast::channel(256).0;
    let metrics = crate::metrics::Metrics::new();
    let store: Arc<dyn crate::auth::revoked::RevocationStore> = match &settings.session_store {
        Some(url) => {
            tracing::info!(store = %url.shown, "sign-outs shared through the session store");
            metrics.session_store_gauge().set(0);
            crate::auth::shared_store::start(
                url,
                local,
                signed_out.clone(),
                metrics.session_store_gauge(),
            )
            .map_err(std::io::Error::other)?
        }
        None => Arc::new(local),
    };
    if let Some(o) = &rt.auth.oidc {
        o.start();
    }
    let acme = crate::tls::acme::Acme::default();
    rt.sync_acme(&acme);
    let shared = Arc::new(Shared {
        acme,
        runtime: ArcSwap::from_pointee(rt),
        store,
        refreshes: crate::auth::Refreshes::default(),
        signed_out,
        metrics,
        sockets: Arc::default(),
        shadow_log: Default::default(),
    });
    let (tx, rx) = watch::channel(false);
    let main = listener::bind(settings.address, crate::workers::Workers::global().len())?;
    let addr = main.addr;
    let mut tasks = Vec::new();
    let tls = if settings.insecure_server {
        None
    } else {
        let resolver = Arc::new(listener::LiveResolver(shared.clone()));
        Some(crate::tls::server_config(resolver).map_err(std::io::Error::other)?)
    };
    tasks.push(tokio::spawn(listener::serve(
        main,
        tls,
        shared.clone(),
        listener::Limits::from(&settings),
        rx.clone(),
    )));
    let mut redirect_addr = None;
    if let Some(a) = settings.http_redirect_addr {
        let l = TcpListener::bind(a).await?;
        redirect_addr = Some(l.local_addr()?);
        tasks.push(tokio::spawn(redirect::serve(
            l,
            addr.port(),
            shared.clone(),
            rx.clone(),
        )));
    }
    let mut admin_addr = None;
    if let Some(a) = settings.metrics_address {
        let l = TcpListener::bind(a).await?;
        admin_addr = Some(l.local_addr()?);
        tracing::info!(addr = %l.local_addr()?, "admin listener (/healthz, /readyz)");
        tasks.push(tokio::spawn(admin::serve(l, shared.clone(), rx.clone())));
    }
    tracing::info!(%addr, tls = !settings.insecure_server, redirect = ?redirect_addr, "portcullis listening");
    Ok(Handle {
        addr,
        redirect_addr,
        admin_addr,
        shared,

        shutdown: tx,
        tasks,
    })
}

/// A small plain-HTTP/1.1 listener (redirect port, admin port) whose answers need no I/O.
pub(crate) async fn serve_small<F>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    answer: F,
) where
    F: Fn(&http::Request<hyper::body::Incoming>) -> http::Response<crate::proxy::Body>
        + Clone
        + Send
        + Sync
        + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let period = std::time::Duration::from_millis(50);
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(period).await; continue; }
            },
            _ = shutdown.changed() => return,
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = answer(&req);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
