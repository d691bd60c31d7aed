//! bellwether-agent.
#![forbid(unsafe_code)]
