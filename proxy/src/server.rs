//! Listeners, graceful shutdown, reload, and the metrics/health endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::body::{self, Body};
use crate::config::ProxyConfig;
use crate::error::{ConfigError, ServerError};
use crate::metrics::Metrics;
use crate::proxy::{self, Runtime};

/// State shared by all connections.
pub struct Shared {
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl Shared {
    /// The current runtime (config, backends, caches).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Swap in a new configuration; open connections keep working and pick
    /// it up on their next request.
    pub fn reload(&self, cfg: ProxyConfig) -> Result<(), ConfigError> {
        let prev = self.runtime.load_full();
        if prev.cfg.listen != cfg.listen || prev.cfg.metrics_listen != cfg.metrics_listen {
            warn!("listen addresses changed; they take effect after a restart");
        }
        let next = Runtime::build(cfg, self.metrics.clone(), Some(&prev))?;
        self.runtime.store(Arc::new(next));
        self.metrics.reloads.inc();
        info!("configuration reloaded");
        Ok(())
    }

    /// Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let rt = self.runtime.load();
        rt.store.objects.run_pending_tasks();
        self.metrics
            .cache_bytes
            .set(i64::try_from(rt.store.objects.weighted_size()).unwrap_or(i64::MAX));
        self.metrics
            .cache_entries
            .set(i64::try_from(rt.store.objects.entry_count()).unwrap_or(i64::MAX));
        self.metrics.encode()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// A running proxy.
pub struct ProxyHandle {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ProxyHandle {
    /// Apply a new configuration without dropping connections.
    pub fn reload(&self, cfg: ProxyConfig) -> Result<(), ConfigError> {
        self.shared.reload(cfg)
    }

    /// Stop accepting, let open requests finish (bounded by
    /// `timeouts.shutdown`), then return.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Wait until the servers stop (after `shutdown` is triggered elsewhere).
    pub fn trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Wait for the servers to end.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Bind both listeners and start serving.
pub async fn start(cfg: ProxyConfig) -> Result<ProxyHandle, ServerError> {
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::build(cfg, metrics.clone(), None)?;
    let listener = bind(runtime.cfg.listen).await?;
    let mlistener = bind(runtime.cfg.metrics_listen).await?;
    let addr = listener.local_addr()?;
    let metrics_addr = mlistener.local_addr()?;
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(runtime),
        metrics,
        ready: AtomicBool::new(false),
    });
    let (tx, rx) = watch::channel(false);
    let main = tokio::spawn(serve_proxy(listener, shared.clone(), rx.clone()));
    let aux = tokio::spawn(serve_metrics(mlistener, shared.clone(), rx));
    shared.ready.store(true, Ordering::Relaxed);
    info!(%addr, %metrics_addr, "zetaback-proxy listening");
    Ok(ProxyHandle {
        addr,
        metrics_addr,
        shared,
        shutdown: tx,
        tasks: vec![main, aux],
    })
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_proxy(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = wait_shutdown(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let rt = shared.runtime();
            async move { Ok::<_, Infallible>(proxy::handle(rt, req, peer).await) }
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc);
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                debug!(error = %e, "connection ended with error");
            }
        });
    }
    drop(listener);
    shared.ready.store(false, Ordering::Relaxed);
    let timeout = shared.runtime().cfg.timeouts.shutdown;
    info!(open = graceful.count(), "draining connections");
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections closed"),
        _ = tokio::time::sleep(timeout) => warn!("shutdown timeout; closing remaining connections"),
    }
}

async fn serve_metrics(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = wait_shutdown(&mut stop) => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = shared.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(metrics_endpoint(&shared, &req)) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, s: String) -> Response<Body> {
    let mut r = Response::new(body::full(s));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn metrics_endpoint(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics_text(),
        ),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let rt = shared.runtime();
            let any_up = rt.backends.iter().any(|b| !b.is_down());
            if shared.ready.load(Ordering::Relaxed) && any_up {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}
