//! bellwether-drift.
#![forbid(unsafe_code)]
