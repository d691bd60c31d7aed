//! bellwether-store.
#![forbid(unsafe_code)]
