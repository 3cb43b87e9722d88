//! Named, typed, range-checked parameters.
//!
//! Every policy, workload and the cost model declares its parameters as a table of
//! [`ParamDef`]s (name, type, default, allowed range or choices, one line of help). The xtask
//! checks an experiment file against the same tables before anything boots, and the guest checks
//! again when it decodes a point, so both sides accept exactly the same inputs.
//!
//! Invariant: a [`Params`] returned by [`Params::checked`] holds every declared parameter, each of
//! its declared type and within range.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// A parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A real number.
    Float(f64),
    /// A word (no spaces, no `=`).
    Text(String),
    /// A switch.
    Bool(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Text(s) => write!(f, "{s}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl Value {
    /// Reads a value written by `Display`: an integer, a real, `true`/`false`, else a word.
    pub fn parse(s: &str) -> Value {
        if let Ok(i) = s.parse::<i64>() {
            Value::Int(i)
        } else if let Ok(x) = s.parse::<f64>() {
            Value::Float(x)
        } else if s == "true" || s == "false" {
            Value::Bool(s == "true")
        } else {
            Value::Text(s.to_string())
        }
    }
}

/// The type and limits of a parameter.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// An integer in `[min, max]`.
    Int {
        /// The value when none is given.
        default: i64,
        /// Smallest value accepted.
        min: i64,
        /// Largest value accepted.
        max: i64,
    },
    /// A real in `[min, max]`.
    Float {
        /// The value when none is given.
        default: f64,
        /// Smallest value accepted.
        min: f64,
        /// Largest value accepted.
        max: f64,
    },
    /// One of `choices`.
    Text {
        /// The value when none is given.
        default: &'static str,
        /// Every value accepted.
        choices: &'static [&'static str],
    },
    /// A switch.
    Bool {
        /// The value when none is given.
        default: bool,
    },
}

/// One declared parameter.
#[derive(Debug, Clone, Copy)]
pub struct ParamDef {
    /// Its name.
    pub name: &'static str,
    /// Type, default and limits.
    pub kind: Kind,
    /// One line for error messages and `--help`.
    pub help: &'static str,
}

impl ParamDef {
    /// An integer parameter.
    pub const fn int(name: &'static str, default: i64, min: i64, max: i64, help: &'static str) -> Self {
        ParamDef { name, kind: Kind::Int { default, min, max }, help }
    }
    /// A real parameter.
    pub const fn float(name: &'static str, default: f64, min: f64, max: f64, help: &'static str) -> Self {
        ParamDef { name, kind: Kind::Float { default, min, max }, help }
    }
    /// A parameter that is one of `choices`.
    pub const fn text(
        name: &'static str,
        default: &'static str,
        choices: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        ParamDef { name, kind: Kind::Text { default, choices }, help }
    }
    /// A switch.
    pub const fn bool(name: &'static str, default: bool, help: &'static str) -> Self {
        ParamDef { name, kind: Kind::Bool { default }, help }
    }

    /// What is allowed, in words.
    pub fn allowed(&self) -> String {
        match self.kind {
            Kind::Int { min, max, .. } => format!("an integer from {min} to {max}"),
            Kind::Float { min, max, .. } => format!("a number from {min} to {max}"),
            Kind::Text { choices, .. } => format!("one of {}", choices.join(", ")),
            Kind::Bool { .. } => "true or false".into(),
        }
    }

    /// The value a parameter takes when it is not given.
    pub fn default_value(&self) -> Value {
        match self.kind {
            Kind::Int { default, .. } => Value::Int(default),
            Kind::Float { default, .. } => Value::Float(default),
            Kind::Text { default, .. } => Value::Text(default.into()),
            Kind::Bool { default } => Value::Bool(default),
        }
    }

    fn check(&self, v: &Value) -> Result<Value, ParamError> {
        let bad = || ParamError::Bad { name: self.name.into(), value: v.to_string(), allowed: self.allowed() };
        match (self.kind, v) {
            (Kind::Int { min, max, .. }, Value::Int(i)) if (min..=max).contains(i) => Ok(v.clone()),
            (Kind::Float { min, max, .. }, Value::Int(i)) if (min..=max).contains(&(*i as f64)) => {
                Ok(Value::Float(*i as f64))
            }
            (Kind::Float { min, max, .. }, Value::Float(x)) if (min..=max).contains(x) => Ok(v.clone()),
            (Kind::Text { choices, .. }, Value::Text(s)) if choices.contains(&s.as_str()) => Ok(v.clone()),
            (Kind::Bool { .. }, Value::Bool(_)) => Ok(v.clone()),
            _ => Err(bad()),
        }
    }
}

/// A parameter that is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// No parameter of that name.
    Unknown {
        /// The name given.
        name: String,
        /// The names accepted.
        allowed: Vec<&'static str>,
    },
    /// A value of the wrong type or out of range.
    Bad {
        /// The parameter.
        name: String,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// Something else about the point (names the problem).
    Other(String),
}

impl ParamError {
    /// The parameter the error is about, if one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ParamError::Unknown { name, .. } | ParamError::Bad { name, .. } => Some(name),
            ParamError::Other(_) => None,
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Unknown { name, allowed } if allowed.is_empty() => {
                write!(f, "unknown parameter `{name}` (this takes no parameters)")
            }
            ParamError::Unknown { name, allowed } => {
                write!(f, "unknown parameter `{name}`; allowed: {}", allowed.join(", "))
            }
            ParamError::Bad { name, value, allowed } => write!(f, "`{name}` = {value}: expected {allowed}"),
            ParamError::Other(s) => write!(f, "{s}"),
        }
    }
}

/// Parameters by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(BTreeMap<String, Value>);

impl Params {
    /// None.
    pub fn new() -> Self {
        Params(BTreeMap::new())
    }
    /// Sets `name`.
    pub fn set(&mut self, name: &str, v: Value) {
        self.0.insert(name.into(), v);
    }
    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
    /// Every parameter, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// Removes `name`, returning it.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name)
    }

    /// These parameters checked against `defs`, with defaults for those not given.
    pub fn checked(&self, defs: &[ParamDef]) -> Result<Params, ParamError> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.0 {
            let d = defs.iter().find(|d| d.name == k).ok_or_else(|| ParamError::Unknown {
                name: k.clone(),
                allowed: defs.iter().map(|d| d.name).collect(),
            })?;
            out.insert(k.clone(), d.check(v)?);
        }
        for d in defs {
            out.entry(d.name.into()).or_insert_with(|| d.default_value());
        }
        Ok(Params(out))
    }

    /// An integer parameter (0 if absent: only call on checked parameters).
    pub fn int(&self, name: &str) -> i64 {
        match self.0.get(name) {
            Some(Value::Int(i)) => *i,
            Some(Value::Float(x)) => *x as i64,
            _ => 0,
        }
    }
    /// A real parameter.
    pub fn float(&self, name: &str) -> f64 {
        match self.0.get(name) {
            Some(Value::Float(x)) => *x,
            Some(Value::Int(i)) => *i as f64,
            _ => 0.0,
        }
    }
    /// A word parameter.
    pub fn text(&self, name: &str) -> &str {
        match self.0.get(name) {
            Some(Value::Text(s)) => s,
            _ => "",
        }
    }
    /// A switch.
    pub fn bool(&self, name: &str) -> bool {
        matches!(self.0.get(name), Some(Value::Bool(true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFS: &[ParamDef] = &[
        ParamDef::int("n", 3, 1, 10, "a count"),
        ParamDef::float("x", 0.5, 0.0, 1.0, "a fraction"),
        ParamDef::text("mode", "a", &["a", "b"], "a mode"),
        ParamDef::bool("on", false, "a switch"),
    ];

    #[test]
    fn defaults_fill_in_and_values_convert() {
        let mut p = Params::new();
        p.set("x", Value::Int(1));
        let c = p.checked(DEFS).unwrap();
        assert_eq!(c.int("n"), 3);
        assert_eq!(c.float("x"), 1.0);
        assert_eq!(c.text("mode"), "a");
        assert!(!c.bool("on"));
    }

    #[test]
    fn errors_name_the_field_and_what_is_allowed() {
        let mut p = Params::new();
        p.set("n", Value::Int(11));
        let e = p.checked(DEFS).unwrap_err();
        assert_eq!(e.field(), Some("n"));
        assert_eq!(e.to_string(), "`n` = 11: expected an integer from 1 to 10");
        let mut p = Params::new();
        p.set("mode", Value::Text("c".into()));
        assert_eq!(p.checked(DEFS).unwrap_err().to_string(), "`mode` = c: expected one of a, b");
        let mut p = Params::new();
        p.set("m", Value::Int(1));
        assert_eq!(p.checked(DEFS).unwrap_err().to_string(), "unknown parameter `m`; allowed: n, x, mode, on");
        let mut p = Params::new();
        p.set("n", Value::Float(2.5));
        assert!(p.checked(DEFS).is_err());
    }

    #[test]
    fn values_round_trip_through_text() {
        for v in
            [Value::Int(-4), Value::Float(0.07292), Value::Float(45.0), Value::Bool(true), Value::Text("lru4k".into())]
        {
            assert_eq!(Value::parse(&v.to_string()), v);
        }
    }
}
