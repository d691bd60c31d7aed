//! Per-host watching during a rollout.
