//! Shared by the telemetry integration tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod otlp;
pub mod prometheus;
