//! bellwether-proxy.
#![forbid(unsafe_code)]
