//! The HTTP port: `/metrics` for Prometheus, `/healthz` and `/readyz` for Kubernetes probes,
//! and `GET /v1/ipm` for bidders that pull live values instead of reading the output topic.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query as QueryParams, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::live::{LiveState, Query};
use crate::metrics::Metrics;

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveState>,
}

/// Binds `addr` and returns the bound address with the server future, which runs until
/// `shutdown` is cancelled. Binding first lets callers use port 0 and learn the port.
pub async fn bind(
    addr: SocketAddr,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/ipm", get(ipm))
        .with_state(state);
    let server = async move {
        axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
    };
    Ok((bound, server))
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.live.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn ipm(State(state): State<HttpState>, QueryParams(query): QueryParams<Query>) -> Response {
    Json(state.live.query(&query)).into_response()
}
