"""A tiny package for trying rdist."""
