//! ipm-stream: live IPM (installs per thousand impressions) per ad creative, from Kafka.
//!
//! How an event flows through the modules:
//!
//! - [`source`] joins the consumer group and, on assignment, starts each partition where its
//!   window state can be rebuilt from (commit metadata written by [`pipeline`]).
//! - [`decode`] turns a message payload into an event, borrowing from the payload.
//! - [`aggregate`] counts it into per-partition pane rings ([`window`]), tracks watermarks and,
//!   when the watermark passes a slide boundary, emits the windows whose value changed.
//! - [`pipeline`] publishes those as [`output`] records, sets [`metrics`] gauges and the
//!   [`live`] view behind [`http`], and commits input offsets once the broker acknowledged.
//!
//! [`config`] reads settings; [`ipm`] holds the IPM and confidence-interval arithmetic.

#![forbid(unsafe_code)]

pub mod aggregate;
pub mod clients;
pub mod config;
pub mod deadletter;
pub mod decode;
pub mod dedupe;
pub mod demo;
pub mod http;
pub mod ipm;
pub mod live;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod simulate;
pub mod source;
pub mod window;

pub use config::Config;
pub use pipeline::{start, PipelineError, Running};
