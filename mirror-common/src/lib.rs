//! Types the kernel program and the agent must agree on, byte for byte.
//!
//! `#![no_std]`, `#[repr(C)]`, explicit-width integers, no implicit padding.
//! Nothing else lives here.
#![no_std]
