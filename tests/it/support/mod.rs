//! Shared support code for the integration tests: a real Kafka broker, client helpers, a
//! naive reference for window output, and ways to run the service.

// Not every test uses every helper.
#![allow(dead_code)]

pub mod broker;
pub mod kafka;
pub mod reference;
pub mod service;
