//! stepgate: task-bounded tokens for AI agents.
//!
//! An agent proves its workload identity (a SPIFFE JWT-SVID) and asks for
//! a token for one step of a workflow. A Cedar policy decides — allow,
//! deny, or allow after review — and an allowed step gets a short-lived,
//! single-audience JWT carrying exactly the scopes asked for. Step-ups on
//! one chain of the workflow graph are reviewed as one batch. Every state
//! change is an event in a hash-chained sled log, replayed for audit.
//!
//! The decision core ([`workflow`], [`scope`], [`request_id`], [`policy`],
//! [`review`], [`plan`], [`event`], [`chain`], [`engine`]) does no I/O and
//! reads no clock. Around it: [`store`] (sled), [`token`] and [`identity`]
//! (signatures), [`service`] (the task that owns the engine), [`bus`] and
//! [`client`] (transports and clients), [`audit`], [`demo`] and [`cli`]
//! (whose output goes through [`out`]).
//!
//! See README.md for the file formats, the token claims and the CLI.

pub mod audit;
pub mod bus;
pub mod chain;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod demo;
pub mod engine;
pub mod event;
pub mod guard;
pub mod identity;
pub mod nats;
pub mod out;
pub mod plan;
pub mod policy;
pub mod remote;
pub mod request_id;
pub mod review;
pub mod scope;
pub mod serve;
pub mod service;
pub mod spiffe;
pub mod store;
pub mod text;
pub mod token;
pub mod workflow;
