//! The kernel's JSON writer for the machine-readable lines it prints (`@@BOOT`, `@@RESULT`,
//! `@@BENCH`): the guest/host protocol's one writer (`boot::protocol::json`), into a `String`.

extern crate alloc;

/// Builds one JSON value into a string.
pub type Json = boot::protocol::json::Json<alloc::string::String>;
