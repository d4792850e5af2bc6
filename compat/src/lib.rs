//! Legacy pytest-xdist compatibility: the execnet "xspec" worker grammar ([`xspec`]) and the
//! legacy configuration readers and their translation to rdist ([`legacy`]). Pure parsing, no
//! I/O beyond reading the config files it is asked to find, no printing.

pub mod legacy;
pub mod xspec;
