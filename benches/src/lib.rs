//! Benches live in `benches/`; see `compare.sh` for the comparison with rsync.
