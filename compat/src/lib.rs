//! Legacy pytest-xdist compatibility: the execnet "xspec" worker grammar today; legacy options,
//! ini/toml readers and the migration writer as they land. Pure parsing, no I/O beyond reading
//! the files it is asked to read, no printing.

pub mod xspec;
