//! The one-machine runner of a configuration change (`bellwether config apply --database
//! URL`): steps the same `bellwether_engine::config` engine as the server's `config` task,
//! carrying out its actions directly with this crate (trial, snapshot, apply, revert) and
//! feeding it this crate's [`crate::Sampler`] rates. No second engine.
//!
//! OWNER: helper `confengine`.
