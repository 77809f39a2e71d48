//! The product's integration tests, compiled as one test binary (cargo builds `tests/sidecar/` as
//! the target `sidecar`): every module shares the `support` harness instead of compiling its own
//! copy; the simulator's own tests are not here.

mod binary;
mod dev_mode;
mod fleet;
mod hardening;
mod hostile;
mod integrations;
mod lookup;
mod operations;
mod operator;
mod pacing;
mod promises;
mod properties;
mod resilience;
mod support;
