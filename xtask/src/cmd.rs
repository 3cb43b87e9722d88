//! The commands, one file each: `cargo xtask qemu`, `test`, `bench`, `experiment`, `mutants`
//! and `stress`. Each file's header gives its synopsis; each exposes the function `main.rs`
//! dispatches to.

pub mod bench;
pub mod experiment;
pub mod mutants;
pub mod qemu;
pub mod stress;
pub mod test;
