//! bellwether-predict.
#![forbid(unsafe_code)]
