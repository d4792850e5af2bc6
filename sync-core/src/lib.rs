//! rdist's sync engine. It scans a tree, applies the ignore rules, builds a BLAKE3 manifest,
//! and mirrors it into a destination through an agent that speaks the rdist wire protocol over
//! any byte stream. It never prints, parses command lines or exits: callers get values, errors
//! and problem lists back, and observe progress through callbacks.

pub mod agent;
pub mod auth;
pub mod delta;
pub mod filter;
pub mod hash;
pub mod manifest;
pub mod path;
pub mod proto;
pub mod push;
pub mod scan;
pub mod stage;
pub mod walk;
