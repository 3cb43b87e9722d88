//! A minimal JSON writer for the machine-readable lines the kernel prints (`@@BOOT`,
//! `@@RESULT`): objects and arrays built by nesting closures, strings escaped.

extern crate alloc;

use alloc::string::String;
use core::fmt::Write;

/// Builds one JSON value into a string.
#[derive(Debug, Default)]
pub struct Json {
    out: String,
    first: bool,
}

impl Json {
    /// An empty writer.
    pub fn new() -> Self {
        Self { out: String::new(), first: true }
    }

    /// The text written.
    pub fn finish(self) -> String {
        self.out
    }

    fn sep(&mut self) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
    }

    fn key(&mut self, k: &str) {
        self.sep();
        self.string(k);
        self.out.push(':');
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    /// `{ ... }` as the whole value.
    pub fn object(&mut self, f: impl FnOnce(&mut Self)) {
        self.out.push('{');
        self.first = true;
        f(self);
        self.out.push('}');
        self.first = false;
    }

    /// `"k": "v"`.
    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.string(v);
    }

    /// `"k": n`.
    pub fn num(&mut self, k: &str, v: impl core::fmt::Display) {
        self.key(k);
        let _ = write!(self.out, "{v}");
    }

    /// `"k": true|false`.
    pub fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.out.push_str(if v { "true" } else { "false" });
    }

    /// `"k": { ... }`.
    pub fn obj(&mut self, k: &str, f: impl FnOnce(&mut Self)) {
        self.key(k);
        self.object(f);
    }

    /// `"k": [ ... ]` where `f` adds elements with [`Json::item`].
    pub fn arr(&mut self, k: &str, f: impl FnOnce(&mut Self)) {
        self.key(k);
        self.out.push('[');
        self.first = true;
        f(self);
        self.out.push(']');
        self.first = false;
    }

    /// An object element of an array.
    pub fn item(&mut self, f: impl FnOnce(&mut Self)) {
        self.sep();
        self.object(f);
    }
}
