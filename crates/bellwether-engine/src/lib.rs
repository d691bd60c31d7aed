//! bellwether-engine.
#![forbid(unsafe_code)]
