//! The integration tests of `mfe-core`, one binary: rules over the whole workspace. One module,
//! so no serial group (and no `mfe-testkit`: `workspace` checks that this manifest names no
//! workspace crate). `tests/parse.rs` stays its own binary: it sets process environment
//! variables (`std::env::set_var`), which would leak into every other test of a shared process.

mod workspace;
