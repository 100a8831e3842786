//! The engine: a deterministic state machine over the event log.
//!
//! [`state`] is the fold of events; [`core`] turns commands into events.
//! Neither does I/O: [`crate::service`] drives them with a clock, the
//! store, the signing key and a transport.

pub mod core;
pub mod state;

pub use self::core::{
    Config, DecisionReply, Engine, EngineError, Env, Ids, Minter, RefuseKind, RejectKind,
    ReviewDecision, RunStartedReply, SeqIds, StepReply, TokenReply, TokenRequest, V7Ids,
};
pub use self::state::{
    ApplyError, Batch, BatchStatus, Run, RunStatus, State, StepState, StepStatus, TokenRecord,
    TokenStatus, Verdict,
};
