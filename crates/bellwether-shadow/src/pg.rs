//! (being written: see docs/shadow.md)
