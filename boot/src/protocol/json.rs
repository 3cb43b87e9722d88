//! The one JSON writer of the guest's machine-readable lines: the `@@` payloads of the boot
//! report, the default job, the benchmarks, and `hmm::place::spec`'s point results and trace
//! events.
//!
//! Objects and arrays are built by nesting closures; keys and strings are escaped (quote,
//! backslash and control characters); numbers are written by their `Display`, and floats by
//! [`Json::fixed`] with a given number of decimals, a non-finite one as `0` (JSON has no NaN or
//! infinity). The writer appends to any [`core::fmt::Write`] sink and does not allocate itself:
//! the kernel and `hmm` write into a `String`. A sink's error (a `String` has none) is kept and
//! reported by [`Json::failed`].

use core::fmt::{self, Write};

/// Builds one JSON value into `W`.
#[derive(Debug, Default)]
pub struct Json<W> {
    out: W,
    /// No element has been written at the current nesting level yet (no comma before the next).
    first: bool,
    /// A write to the sink failed.
    failed: bool,
}

impl<W: Write + Default> Json<W> {
    /// An empty writer into a new sink.
    pub fn new() -> Self {
        Self::into(W::default())
    }
}

impl<W: Write> Json<W> {
    /// A writer appending to `out`.
    pub fn into(out: W) -> Self {
        Self { out, first: true, failed: false }
    }

    /// The sink, with the text written.
    pub fn finish(self) -> W {
        self.out
    }

    /// Whether a write to the sink failed (the text is then incomplete).
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn put(&mut self, s: &str) {
        self.failed |= self.out.write_str(s).is_err();
    }

    fn put_fmt(&mut self, a: fmt::Arguments<'_>) {
        self.failed |= self.out.write_fmt(a).is_err();
    }

    fn sep(&mut self) {
        if !self.first {
            self.put(",");
        }
        self.first = false;
    }

    fn key(&mut self, k: &str) {
        self.sep();
        self.string(k);
        self.put(":");
    }

    /// `s` as a JSON string, escaped.
    fn string(&mut self, s: &str) {
        self.put("\"");
        let mut start = 0;
        for (i, c) in s.char_indices() {
            let esc = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                c if (c as u32) < 0x20 => "",
                _ => continue,
            };
            self.put(&s[start..i]);
            if esc.is_empty() {
                self.put_fmt(format_args!("\\u{:04x}", c as u32));
            } else {
                self.put(esc);
            }
            start = i + c.len_utf8();
        }
        self.put(&s[start..]);
        self.put("\"");
    }

    fn float(&mut self, x: f64, decimals: usize) {
        if x.is_finite() {
            self.put_fmt(format_args!("{x:.decimals$}"));
        } else {
            self.put("0");
        }
    }

    /// `{ ... }` as the whole value (or an array's element: see [`Json::item`]).
    pub fn object(&mut self, f: impl FnOnce(&mut Self)) {
        self.put("{");
        self.first = true;
        f(self);
        self.put("}");
        self.first = false;
    }

    /// `"k": "v"`.
    pub fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.string(v);
    }

    /// `"k": "v"`, or `"k": null` without a value.
    pub fn str_or_null(&mut self, k: &str, v: Option<&str>) {
        self.key(k);
        match v {
            Some(v) => self.string(v),
            None => self.put("null"),
        }
    }

    /// `"k": n`, `n` written by its `Display` (an integer; floats go through [`Json::fixed`]).
    pub fn num(&mut self, k: &str, v: impl fmt::Display) {
        self.key(k);
        self.put_fmt(format_args!("{v}"));
    }

    /// `"k": x` with `decimals` decimals; `0` if `x` is not finite.
    pub fn fixed(&mut self, k: &str, x: f64, decimals: usize) {
        self.key(k);
        self.float(x, decimals);
    }

    /// `"k": true|false`.
    pub fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.put(if v { "true" } else { "false" });
    }

    /// `"k": { ... }`.
    pub fn obj(&mut self, k: &str, f: impl FnOnce(&mut Self)) {
        self.key(k);
        self.object(f);
    }

    /// `"k": [ ... ]` where `f` adds elements with [`Json::item`].
    pub fn arr(&mut self, k: &str, f: impl FnOnce(&mut Self)) {
        self.key(k);
        self.put("[");
        self.first = true;
        f(self);
        self.put("]");
        self.first = false;
    }

    /// An object element of an array.
    pub fn item(&mut self, f: impl FnOnce(&mut Self)) {
        self.sep();
        self.object(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    #[test]
    fn nested_objects_and_arrays() {
        let mut j = Json::<String>::new();
        j.object(|j| {
            j.str("name", "dev0");
            j.num("n", 3u64);
            j.bool("ok", true);
            j.obj("inner", |j| j.num("x", -1i64));
            j.arr("list", |j| {
                j.item(|j| j.fixed("t", 1.25, 1));
                j.item(|_| {});
            });
            j.arr("empty", |_| {});
            j.str_or_null("error", None);
            j.str_or_null("label", Some("a"));
        });
        assert!(!j.failed());
        assert_eq!(
            j.finish(),
            "{\"name\":\"dev0\",\"n\":3,\"ok\":true,\"inner\":{\"x\":-1},\"list\":[{\"t\":1.2},{}],\"empty\":[],\"error\":null,\"label\":\"a\"}"
        );
    }

    #[test]
    fn strings_are_escaped_and_floats_finite() {
        let mut j = Json::<String>::new();
        j.object(|j| {
            j.str("s", "a\"b\\c\n\u{1}é");
            j.str("k\"ey", "");
            j.fixed("nan", f64::NAN, 1);
            j.fixed("inf", f64::INFINITY, 4);
            j.fixed("u", 0.123456, 4);
        });
        assert_eq!(j.finish(), "{\"s\":\"a\\\"b\\\\c\\n\\u0001é\",\"k\\\"ey\":\"\",\"nan\":0,\"inf\":0,\"u\":0.1235}");
    }

    /// A sink that takes `room` bytes, then fails.
    struct Small {
        room: usize,
    }

    impl Write for Small {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.room = self.room.checked_sub(s.len()).ok_or(fmt::Error)?;
            Ok(())
        }
    }

    #[test]
    fn a_failing_sink_is_reported() {
        let mut j = Json::into(Small { room: 9 });
        j.object(|j| j.str("k", "v"));
        assert!(!j.failed());
        j.object(|j| j.str("key", "a longer value"));
        assert!(j.failed());
    }
}
