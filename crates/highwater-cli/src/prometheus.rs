//! `--metrics-addr ADDR`: serves every metric the process records (see
//! `docs/metrics.md`) in Prometheus' text format at `http://ADDR/` (any
//! path), from metrics-exporter-prometheus's HTTP listener on its own
//! thread.

use std::net::SocketAddr;

use highwater::Result;

/// Installs the Prometheus recorder for this process and starts its HTTP
/// listener on `addr`; registers the descriptions of every metric.
#[cfg(feature = "prometheus")]
pub fn serve(addr: SocketAddr) -> Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| highwater::Error::InvalidArgument(format!("--metrics-addr {addr}: {e}")))?;
    highwater::metrics::describe();
    Ok(())
}

/// Without the `prometheus` feature: the error naming the build that has it.
#[cfg(not(feature = "prometheus"))]
pub fn serve(addr: SocketAddr) -> Result<()> {
    let _ = addr;
    Err(crate::target::not_built("--metrics-addr", "prometheus"))
}
