//! rdist's sync engine. It scans a tree, applies the ignore rules, builds a BLAKE3 manifest,
//! and mirrors it into a destination through an agent that speaks the rdist wire protocol over
//! any byte stream. It never prints, parses command lines or exits: callers get values, errors
//! and problem lists back, and observe progress through callbacks.

pub mod filter;
pub mod manifest;
pub mod path;
pub mod walk;
pub mod hash;
pub mod scan;
pub mod delta;
pub mod proto;
pub mod stage;
pub mod agent;
pub mod push;
