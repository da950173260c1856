//! The `kubectl zetaback` command line.
