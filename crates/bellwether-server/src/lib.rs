//! bellwether-server.
#![forbid(unsafe_code)]
