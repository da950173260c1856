//! Listeners, graceful shutdown, reload, and the metrics/health endpoint.
//! Both listeners cap their open connections (one more is answered 503 and
//! closed) and give a client `limits.headerRead` to send each request head
//! (hyper's header-read timeout, on a clock of the connection's own:
//! [`crate::head_timer`]; it also closes idle keep-alive connections), and
//! disconnect a client that reads nothing for `limits.sendTimeout`.

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
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::body::{self, Body};
use crate::config::{LimitConfig, ProxyConfig};
use crate::error::{ConfigError, ServerError};
use crate::handler::{self, Runtime};
use crate::head_timer::HeadClock;
use crate::metrics::Metrics;
use crate::stall::WriteStallIo;

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
        if prev.cfg.listen != cfg.listen
            || prev.cfg.metrics_listen != cfg.metrics_listen
            || prev.cfg.limits != cfg.limits
        {
            warn!("listen addresses or limits changed; they take effect after a restart");
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
    let limits = shared.runtime().cfg.limits.clone();
    let main = tokio::spawn(serve_proxy(
        listener,
        shared.clone(),
        rx.clone(),
        limits.clone(),
    ));
    let aux = tokio::spawn(serve_metrics(mlistener, shared.clone(), rx, limits));
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

/// Answer sent on a connection over the cap.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
content-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n";

/// A hyper HTTP/1 server builder for one connection, with the client-side
/// limits; its header-read timer is the connection's `clock` (see
/// [`crate::head_timer`]: `drive!` runs its watchdog).
fn http1_builder(limits: &LimitConfig, clock: &HeadClock) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(true)
        .timer(clock.timer())
        .header_read_timeout(limits.header_read)
        .max_header_size(usize::try_from(limits.max_header_bytes.max(8192)).unwrap_or(usize::MAX));
    b
}

/// Accept the next connection, with a permit when under the cap. `None`
/// when shutdown was asked.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>)> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = wait_shutdown(stop) => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                let permit = slots.clone().try_acquire_owned().ok();
                return Some((stream, peer, permit));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// Connections over the cap being answered at once, at most; beyond that
/// they are closed without an answer (a flood must not hold file
/// descriptors in refusals).
const REFUSALS_IN_FLIGHT: usize = 64;

/// Tell a client over the cap, without waiting on it for long: write the
/// 503, then read what it sent (closing with unread data would reset the
/// connection and lose the answer).
fn refuse(mut stream: TcpStream, refusals: &Arc<Semaphore>) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = stream.try_write(OVER_CAPACITY);
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            stream.read(&mut sink),
        )
        .await;
    });
}

/// Run one hyper connection until it ends, or shut it down gracefully
/// (finish the request in progress) once `stop` is set; then release the
/// connection's slot. Meanwhile the watchdog of the connection's
/// header-read clock fires a head's deadline once it passed. (A macro: the
/// connection's service type cannot be named, and a generic function trips
/// over its higher-ranked error type.)
macro_rules! drive {
    ($conn:expr, $clock:expr, $period:expr, $stop:expr, $permit:expr) => {{
        let conn = $conn;
        let clock: HeadClock = $clock;
        let period: std::time::Duration = $period;
        let mut stop = $stop;
        let permit = $permit;
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let first = clock.check(std::time::Instant::now(), period);
            let watchdog = tokio::time::sleep_until(first.into());
            let mut watchdog = std::pin::pin!(watchdog);
            let mut stopping = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            debug!(error = %e, "connection ended with error");
                        }
                        break;
                    }
                    _ = wait_shutdown(&mut stop), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = watchdog.as_mut() => {
                        let next = clock.check(std::time::Instant::now(), period);
                        watchdog.as_mut().reset(next.into());
                    }
                }
            }
            drop(permit);
        });
    }};
}

fn semaphore(cap: usize) -> (Arc<Semaphore>, u32) {
    let cap = cap.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    (
        Arc::new(Semaphore::new(cap)),
        u32::try_from(cap).unwrap_or(u32::MAX),
    )
}

async fn serve_proxy(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    limits: LimitConfig,
) {
    let (slots, cap) = semaphore(limits.max_connections);
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    while let Some((stream, peer, permit)) = accept(&listener, &slots, &mut stop).await {
        let Some(permit) = permit else {
            shared.metrics.refused_proxy.inc();
            refuse(stream, &refusals);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let svc =
            service_fn(move |req: Request<Incoming>| handler::respond(&shared.runtime, req, peer));
        let clock = HeadClock::new();
        drive!(
            http1_builder(&limits, &clock).serve_connection(
                TokioIo::new(WriteStallIo::new(stream, limits.send_timeout)),
                svc
            ),
            clock,
            limits.header_read,
            stop.clone(),
            permit
        );
    }
    drop(listener);
    shared.ready.store(false, Ordering::Relaxed);
    let timeout = shared.runtime().cfg.timeouts.shutdown;
    let open = cap as usize - slots.available_permits();
    info!(open, "draining connections");
    match tokio::time::timeout(timeout, slots.acquire_many(cap)).await {
        Ok(_) => info!("all connections closed"),
        Err(_) => warn!("shutdown timeout; closing remaining connections"),
    }
}

async fn serve_metrics(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    limits: LimitConfig,
) {
    let (slots, _) = semaphore(limits.max_metrics_connections);
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    while let Some((stream, _, permit)) = accept(&listener, &slots, &mut stop).await {
        let Some(permit) = permit else {
            shared.metrics.refused_metrics.inc();
            refuse(stream, &refusals);
            continue;
        };
        let shared2 = shared.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let shared = shared2.clone();
            async move { Ok::<_, Infallible>(metrics_endpoint(&shared, &req)) }
        });
        let clock = HeadClock::new();
        drive!(
            http1_builder(&limits, &clock).serve_connection(
                TokioIo::new(WriteStallIo::new(stream, limits.send_timeout)),
                svc
            ),
            clock,
            limits.header_read,
            stop.clone(),
            permit
        );
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
