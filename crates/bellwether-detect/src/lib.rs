//! bellwether-detect.
#![forbid(unsafe_code)]
