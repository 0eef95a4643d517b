//! Building statements with a variable number of parameters for sqlx's `Any` driver.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Arguments};

/// A parameter value.
#[derive(Debug, Clone)]
pub enum Value {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Text.
    Text(String),
}

/// Parameters collected while a statement is written; `push` returns the placeholder.
#[derive(Debug, Default)]
pub struct Params(Vec<Value>);

impl Params {
    /// Adds a value; its placeholder (`$n`).
    pub fn push(&mut self, v: Value) -> String {
        self.0.push(v);
        format!("${}", self.0.len())
    }

    /// A comma-separated list of placeholders for `values`.
    pub fn list(&mut self, values: impl IntoIterator<Item = Value>) -> String {
        values.into_iter().map(|v| self.push(v)).collect::<Vec<_>>().join(", ")
    }

    /// `sql` with these parameters bound.
    pub fn bind(self, sql: &str) -> Query<'_, Any, AnyArguments<'_>> {
        let mut args = AnyArguments::default();
        for v in self.0 {
            // Adding a plain value to `Any` arguments cannot fail.
            let _ = match v {
                Value::Int(i) => args.add(i),
                Value::Float(f) => args.add(f),
                Value::Text(s) => args.add(s),
            };
        }
        sqlx::query_with(sql, args)
    }
}
