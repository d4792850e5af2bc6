//! Legacy pytest-xdist compatibility: the execnet "xspec" worker grammar ([`xspec`]), the
//! legacy configuration readers and their translation to rdist ([`legacy`]), and rdist's own
//! configuration file, which a migration writes ([`config`]). Pure parsing, no
//! I/O beyond reading the config files it is asked to find, no printing.

pub mod config;
pub mod legacy;
pub mod xspec;
