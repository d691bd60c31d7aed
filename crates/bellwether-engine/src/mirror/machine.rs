//! The state machine behind [`super::MirrorEngine`].

use std::collections::BTreeMap;

use bellwether_model::mirror::{DependencySpec, Mode};
use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Inst {
    pub role: Role,
    pub state: InstanceState,
    pub endpoint: Option<String>,
    pub provisioned: bool,
    pub since_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    pub phase: Phase,
    pub next_id: u64,
    pub pending: BTreeMap<u64, Action>,
    pub instances: BTreeMap<String, Inst>,
    pub primary: String,
    pub mode: Mode,
}

impl State {
    pub fn new(spec: &DependencySpec, now_ms: i64) -> State {
        let _ = (spec, now_ms);
        todo!()
    }
}

impl MirrorEngine {
    pub(super) fn start(&mut self, now_ms: i64) -> Output {
        let _ = now_ms;
        todo!()
    }

    pub(super) fn apply(&mut self, input: Input, now_ms: i64, out: &mut Output) {
        let _ = (input, now_ms, out);
        todo!()
    }

    pub(super) fn status_view(&self) -> Status {
        todo!()
    }
}
