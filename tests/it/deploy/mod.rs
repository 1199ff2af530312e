//! Tests of what deploy/ ships against the running service: a real Prometheus scraping it
//! with the shipped rules, every metric the dashboard and rules use being exported, and the
//! Kubernetes configuration files loading.

mod configs;
mod names;
mod prometheus;
mod promql;
