//! stepgate
pub mod identity;
pub mod scope;
pub mod spiffe;
pub mod token;
pub mod workflow;
