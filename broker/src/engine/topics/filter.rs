//! Subscription filter policies over message attributes, as in Amazon SNS.
//!
//! A policy is parsed once, when a subscription is created
//! ([`FilterPolicy::parse`]), and evaluated for every publish
//! ([`FilterPolicy::matches`]) against the message's attributes, whose values
//! are all strings. Parsing rejects anything this module would not evaluate
//! exactly as written, so a policy that was accepted never fails later.
//!
//! # Syntax
//!
//! A policy is a non-empty JSON object. Every key names a message attribute
//! and must match (AND). Its value is a non-empty array of conditions, of
//! which at least one must match (OR):
//!
//! | condition                                | matches a present attribute that                       |
//! |------------------------------------------|--------------------------------------------------------|
//! | `"red"`                                  | equals `red` exactly                                   |
//! | `5`                                      | parses as a number equal to 5 (`"5"`, `"5.0"`, `"5e0"`)|
//! | `{"prefix": "eu-"}`                      | starts with `eu-`                                      |
//! | `{"suffix": ".jpg"}`                     | ends with `.jpg`                                       |
//! | `{"equals-ignore-case": "Red"}`          | equals `Red` ignoring case                             |
//! | `{"anything-but": "red"}`                | is not `red`; also a number, or a list of strings and numbers |
//! | `{"anything-but": {"prefix": "test-"}}`  | does not start with `test-`                            |
//! | `{"numeric": [">", 0, "<=", 100]}`       | is a number in (0, 100]; one pair (`["=", 5]`, `["<", 0]`) or a lower bound (`>`, `>=`) then an upper bound (`<`, `<=`) |
//! | `{"exists": true}`                       | is present, whatever its value                         |
//! | `{"exists": false}`                      | (matches only when the attribute is absent)            |
//!
//! Every condition but `{"exists": false}` fails when the attribute is
//! absent, `anything-but` included. "Parses as a number" means a finite
//! `f64` in Rust's syntax (`-1.5`, `2e3`); `inf` and `NaN` are not numbers
//! here. A number in `anything-but` excludes attributes numerically equal to
//! it; a string excludes only that exact string.
//!
//! At any object level, `"$or": [policy, policy, ...]` (at least two
//! objects, each a policy that may contain its own `$or`) matches when any
//! of its policies does, and is ANDed with the keys beside it.
//!
//! Attribute policies are flat: a key's value is always an array, never a
//! nested object. A policy holds at most
//! [`FILTER_POLICY_CONDITIONS_MAX`] conditions in all, counting every entry
//! of every key's array, inside `$or` too. Keys starting with `$` other
//! than `$or` are rejected, so that a misspelt operator is an error rather
//! than a filter that never matches. As with any JSON object, a key given
//! twice keeps its last value.
//!
//! # Example
//!
//! ```json
//! {
//!   "store": ["example_corp"],
//!   "price_usd": [{"numeric": [">=", 100, "<", 1000]}],
//!   "$or": [
//!     {"customer_interests": ["rugby", {"prefix": "foot"}]},
//!     {"event": [{"anything-but": ["order_cancelled", "order_returned"]}]}
//!   ]
//! }
//! ```
//!
//! matches a message from `example_corp` priced at 100 up to (not
//! including) 1000 whose customer likes rugby or football, or whose event
//! is present and is neither a cancellation nor a return.
//!
//! # Errors
//!
//! Every error is [`Error::InvalidFilterPolicy`] (field `filter_policy`),
//! whose message starts with `filter_policy`, names where the problem is as
//! a path of keys and array indices (`at "$or"[1]."country"[0]`), and says
//! what was expected and what was given.

use std::collections::HashMap;
use std::fmt;

use broker_proto::limits::FILTER_POLICY_CONDITIONS_MAX;
use serde_json::{Map, Value};

use crate::engine::error::{Error, Result};

/// A parsed filter policy; see the [module docs](self) for the syntax.
#[derive(Debug, Clone)]
pub struct FilterPolicy {
    root: Policy,
}

impl FilterPolicy {
    /// Parses once at subscribe time. Errors are [`Error::InvalidFilterPolicy`]
    /// with a message that starts with `filter_policy` and says what is wrong
    /// and where, e.g.
    /// `filter_policy: at "price"[0]: "numeric" expects operator/number pairs such as [">", 0, "<=", 100]; got [">"]`
    pub fn parse(json: &str) -> Result<FilterPolicy> {
        let value: Value = match serde_json::from_str(json) {
            Ok(value) => value,
            Err(e) => return fail("", format_args!("not valid JSON: {e}")),
        };
        let Value::Object(object) = &value else {
            return fail(
                "",
                format_args!("expects a JSON object; got {}", Got(&value)),
            );
        };
        let mut parser = Parser { conditions: 0 };
        let root = parser.policy(object, "")?;
        if parser.conditions > FILTER_POLICY_CONDITIONS_MAX {
            return fail(
                "",
                format_args!(
                    "a policy holds at most {FILTER_POLICY_CONDITIONS_MAX} conditions \
                     (every entry of every key's array, in all \"$or\" branches); got {}",
                    parser.conditions
                ),
            );
        }
        Ok(FilterPolicy { root })
    }

    /// Matches message attributes (all values are strings).
    pub fn matches(&self, attributes: &HashMap<String, String>) -> bool {
        self.root.matches(attributes)
    }
}

/// One object level of a policy: every key and, if present, the `$or` must
/// match.
#[derive(Debug, Clone)]
struct Policy {
    /// Attribute name and its conditions, at least one of which must match.
    keys: Vec<(String, Vec<Condition>)>,
    /// The `$or` branches: empty when the object has no `$or`, otherwise at
    /// least two, one of which must match.
    any_of: Vec<Policy>,
}

impl Policy {
    fn matches(&self, attributes: &HashMap<String, String>) -> bool {
        self.keys.iter().all(|(name, conditions)| {
            let value = attributes.get(name).map(String::as_str);
            conditions.iter().any(|c| c.matches(value))
        }) && (self.any_of.is_empty() || self.any_of.iter().any(|p| p.matches(attributes)))
    }
}

#[derive(Debug, Clone)]
enum Condition {
    Equals(String),
    NumberEquals(f64),
    Prefix(String),
    Suffix(String),
    /// Stored case-folded by [`fold`], which is applied to the attribute too.
    EqualsIgnoreCase(String),
    /// Matches a present attribute equal to none of these.
    AnythingBut(Vec<Literal>),
    AnythingButPrefix(String),
    Numeric(Range),
    Exists(bool),
}

impl Condition {
    /// `value` is the attribute, `None` when the message lacks it.
    fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return matches!(self, Condition::Exists(false));
        };
        match self {
            Condition::Equals(s) => value == s,
            Condition::NumberEquals(n) => number(value) == Some(*n),
            Condition::Prefix(p) => value.starts_with(p.as_str()),
            Condition::Suffix(s) => value.ends_with(s.as_str()),
            Condition::EqualsIgnoreCase(folded) => fold(value).eq(folded.chars()),
            Condition::AnythingBut(literals) => !literals.iter().any(|l| l.matches(value)),
            Condition::AnythingButPrefix(p) => !value.starts_with(p.as_str()),
            Condition::Numeric(range) => number(value).is_some_and(|n| range.contains(n)),
            Condition::Exists(exists) => *exists,
        }
    }
}

/// A value listed in `anything-but`.
#[derive(Debug, Clone)]
enum Literal {
    String(String),
    Number(f64),
}

impl Literal {
    fn matches(&self, value: &str) -> bool {
        match self {
            Literal::String(s) => value == s,
            Literal::Number(n) => number(value) == Some(*n),
        }
    }
}

/// A numeric interval; a missing bound is unbounded on that side.
#[derive(Debug, Clone, Copy)]
struct Range {
    lower: Option<Bound>,
    upper: Option<Bound>,
}

#[derive(Debug, Clone, Copy)]
struct Bound {
    value: f64,
    inclusive: bool,
}

impl Range {
    fn contains(&self, n: f64) -> bool {
        let above = |b: Bound| {
            if b.inclusive {
                n >= b.value
            } else {
                n > b.value
            }
        };
        let below = |b: Bound| {
            if b.inclusive {
                n <= b.value
            } else {
                n < b.value
            }
        };
        self.lower.is_none_or(above) && self.upper.is_none_or(below)
    }
}

/// An attribute as a number: a finite `f64`, or `None`.
fn number(value: &str) -> Option<f64> {
    value.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Case folding for `equals-ignore-case`, per character so that it needs no
/// allocation at match time.
fn fold(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().flat_map(char::to_lowercase)
}

/// Walks the JSON, building the policy and counting its conditions. Each
/// method takes the path of the value it parses, for error messages.
struct Parser {
    conditions: usize,
}

impl Parser {
    fn policy(&mut self, object: &Map<String, Value>, path: &str) -> Result<Policy> {
        if object.is_empty() {
            return fail(
                path,
                format_args!("expects a non-empty object of attribute names; got {{}}"),
            );
        }
        let mut policy = Policy {
            keys: Vec::with_capacity(object.len()),
            any_of: Vec::new(),
        };
        for (key, value) in object {
            let path = key_path(path, key);
            if key == "$or" {
                policy.any_of = self.or(value, &path)?;
            } else if key.starts_with('$') {
                return fail(
                    &path,
                    format_args!("unknown key; \"$or\" is the only key that may start with \"$\""),
                );
            } else if key.is_empty() {
                return fail(&path, format_args!("attribute names are never empty"));
            } else {
                policy
                    .keys
                    .push((key.clone(), self.conditions(value, &path)?));
            }
        }
        Ok(policy)
    }

    fn or(&mut self, value: &Value, path: &str) -> Result<Vec<Policy>> {
        let branches = match value {
            Value::Array(branches) if branches.len() >= 2 => branches,
            _ => {
                return fail(
                    path,
                    format_args!(
                        "expects an array of at least 2 policy objects; got {}",
                        Got(value)
                    ),
                );
            }
        };
        let mut policies = Vec::with_capacity(branches.len());
        for (i, branch) in branches.iter().enumerate() {
            let path = index_path(path, i);
            let Value::Object(object) = branch else {
                return fail(
                    &path,
                    format_args!("expects a policy object; got {}", Got(branch)),
                );
            };
            policies.push(self.policy(object, &path)?);
        }
        Ok(policies)
    }

    /// A key's value: a non-empty array of conditions.
    fn conditions(&mut self, value: &Value, path: &str) -> Result<Vec<Condition>> {
        let items = match value {
            Value::Array(items) if !items.is_empty() => items,
            Value::Object(_) => {
                return fail(
                    path,
                    format_args!(
                        "expects a non-empty array of conditions; got {} \
                         (attribute policies are flat: nested objects are not supported)",
                        Got(value)
                    ),
                );
            }
            _ => {
                return fail(
                    path,
                    format_args!(
                        "expects a non-empty array of conditions, such as [\"red\"]; got {}",
                        Got(value)
                    ),
                );
            }
        };
        self.conditions += items.len();
        items
            .iter()
            .enumerate()
            .map(|(i, item)| condition(item, &index_path(path, i)))
            .collect()
    }
}

fn condition(value: &Value, path: &str) -> Result<Condition> {
    match value {
        Value::String(s) => Ok(Condition::Equals(s.clone())),
        Value::Number(n) => Ok(Condition::NumberEquals(json_number(n))),
        Value::Object(object) => {
            let mut entries = object.iter();
            match (entries.next(), entries.next()) {
                (Some((name, operand)), None) => operator(name, operand, path),
                _ => fail(
                    path,
                    format_args!(
                        "an operator object has exactly one key, such as {{\"prefix\": \"eu-\"}}; got {}",
                        Got(value)
                    ),
                ),
            }
        }
        Value::Null | Value::Bool(_) | Value::Array(_) => fail(
            path,
            format_args!(
                "expects a string, a number or an operator object such as {{\"prefix\": \"eu-\"}}; got {}",
                Got(value)
            ),
        ),
    }
}

fn operator(name: &str, operand: &Value, path: &str) -> Result<Condition> {
    match name {
        "prefix" => Ok(Condition::Prefix(string_operand(name, operand, path)?)),
        "suffix" => Ok(Condition::Suffix(string_operand(name, operand, path)?)),
        "equals-ignore-case" => Ok(Condition::EqualsIgnoreCase(
            fold(&string_operand(name, operand, path)?).collect(),
        )),
        "anything-but" => anything_but(operand, path),
        "numeric" => Ok(Condition::Numeric(numeric(operand, path)?)),
        "exists" => match operand {
            Value::Bool(exists) => Ok(Condition::Exists(*exists)),
            _ => fail(
                path,
                format_args!("\"exists\" expects true or false; got {}", Got(operand)),
            ),
        },
        _ => fail(
            path,
            format_args!(
                "unknown operator {}; expected one of \"prefix\", \"suffix\", \
                 \"equals-ignore-case\", \"anything-but\", \"numeric\", \"exists\"",
                Value::from(name)
            ),
        ),
    }
}

fn string_operand(name: &str, operand: &Value, path: &str) -> Result<String> {
    match operand {
        Value::String(s) => Ok(s.clone()),
        _ => fail(
            path,
            format_args!("\"{name}\" expects a string; got {}", Got(operand)),
        ),
    }
}

fn anything_but(operand: &Value, path: &str) -> Result<Condition> {
    const EXPECTS: &str = "\"anything-but\" expects a string, a number, a non-empty list of \
                           strings and numbers, or {\"prefix\": \"...\"}";
    let literal = |value: &Value| match value {
        Value::String(s) => Some(Literal::String(s.clone())),
        Value::Number(n) => Some(Literal::Number(json_number(n))),
        _ => None,
    };
    match operand {
        Value::String(_) | Value::Number(_) => Ok(Condition::AnythingBut(
            literal(operand).into_iter().collect(),
        )),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| {
                literal(item).ok_or_else(|| {
                    error(
                        path,
                        format_args!(
                            "\"anything-but\" lists only strings and numbers; got {} in {}",
                            Got(item),
                            Got(operand)
                        ),
                    )
                })
            })
            .collect::<Result<_>>()
            .map(Condition::AnythingBut),
        Value::Object(object) if object.len() == 1 && object.contains_key("prefix") => {
            match &object["prefix"] {
                Value::String(p) if !p.is_empty() => Ok(Condition::AnythingButPrefix(p.clone())),
                other => fail(
                    path,
                    format_args!(
                        "\"anything-but\" {{\"prefix\": ...}} expects a non-empty string; got {}",
                        Got(other)
                    ),
                ),
            }
        }
        _ => fail(path, format_args!("{EXPECTS}; got {}", Got(operand))),
    }
}

fn numeric(operand: &Value, path: &str) -> Result<Range> {
    let pairs_expected = |path| {
        fail(
            path,
            format_args!(
                "\"numeric\" expects operator/number pairs such as [\">\", 0, \"<=\", 100]; got {}",
                Got(operand)
            ),
        )
    };
    let items = match operand {
        Value::Array(items) if items.len() == 2 || items.len() == 4 => items,
        _ => return pairs_expected(path),
    };
    // Each pair as (is it a lower bound, the bound); "=" is both.
    let mut sides = Vec::with_capacity(2);
    for pair in items.chunks(2) {
        let (Value::String(op), Value::Number(n)) = (&pair[0], &pair[1]) else {
            return pairs_expected(path);
        };
        let value = json_number(n);
        let side = match op.as_str() {
            ">" => Side::Lower(Bound {
                value,
                inclusive: false,
            }),
            ">=" => Side::Lower(Bound {
                value,
                inclusive: true,
            }),
            "<" => Side::Upper(Bound {
                value,
                inclusive: false,
            }),
            "<=" => Side::Upper(Bound {
                value,
                inclusive: true,
            }),
            "=" => Side::Equal(value),
            _ => {
                return fail(
                    path,
                    format_args!(
                        "\"numeric\" operators are \"=\", \">\", \">=\", \"<\" and \"<=\"; got {} in {}",
                        Value::from(op.as_str()),
                        Got(operand)
                    ),
                );
            }
        };
        sides.push(side);
    }
    match sides[..] {
        [Side::Lower(b)] => Ok(Range {
            lower: Some(b),
            upper: None,
        }),
        [Side::Upper(b)] => Ok(Range {
            lower: None,
            upper: Some(b),
        }),
        [Side::Equal(value)] => {
            let b = Bound {
                value,
                inclusive: true,
            };
            Ok(Range {
                lower: Some(b),
                upper: Some(b),
            })
        }
        [Side::Lower(lower), Side::Upper(upper)] => {
            let empty = lower.value > upper.value
                || (lower.value == upper.value && !(lower.inclusive && upper.inclusive));
            if empty {
                return fail(
                    path,
                    format_args!(
                        "\"numeric\" range {} matches no number: its lower bound must be below its upper bound",
                        Got(operand)
                    ),
                );
            }
            Ok(Range {
                lower: Some(lower),
                upper: Some(upper),
            })
        }
        _ => fail(
            path,
            format_args!(
                "a two-pair \"numeric\" range is a lower bound (\">\" or \">=\") then an upper bound \
                 (\"<\" or \"<=\"), such as [\">\", 0, \"<=\", 100]; got {}",
                Got(operand)
            ),
        ),
    }
}

#[derive(Clone, Copy)]
enum Side {
    Lower(Bound),
    Upper(Bound),
    Equal(f64),
}

/// A JSON number as `f64`. Without serde_json's `arbitrary_precision`
/// every number converts (large integers approximately).
fn json_number(n: &serde_json::Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

/// `"price"` at the top level, `"$or"[1]."country"` below.
fn key_path(path: &str, key: &str) -> String {
    let key = Value::from(key);
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index_path(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn error(path: &str, what: fmt::Arguments<'_>) -> Error {
    Error::InvalidFilterPolicy {
        path: path.to_string(),
        reason: what.to_string(),
    }
}

fn fail<T>(path: &str, what: fmt::Arguments<'_>) -> Result<T> {
    Err(error(path, what))
}

/// A JSON value as it appears in an error message: compact, and cut short
/// so that a huge policy does not make a huge message.
struct Got<'a>(&'a Value);

impl fmt::Display for Got<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 80;
        let text = self.0.to_string();
        match text.char_indices().nth(MAX_CHARS) {
            Some((cut, _)) => write!(f, "{}...", &text[..cut]),
            None => f.write_str(&text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn policy(json: &str) -> FilterPolicy {
        FilterPolicy::parse(json).unwrap_or_else(|e| panic!("{json} should parse: {e}"))
    }

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Whether `{"k": [condition]}` matches `{"k": value}`.
    fn one(condition: &str, value: &str) -> bool {
        policy(&format!(r#"{{"k": [{condition}]}}"#)).matches(&attrs(&[("k", value)]))
    }

    /// JSON text that is often a policy and often almost one: objects of
    /// conditions, operators and values nested a few levels.
    fn policy_like() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<f64>().prop_map(|f| if f.is_finite() {
                f.to_string()
            } else {
                "1e999".into()
            }),
            "[a-z$<>=-]{0,6}".prop_map(|s| format!("{s:?}")),
            prop::sample::select(vec![
                r#""anything-but""#,
                r#""numeric""#,
                r#""prefix""#,
                r#""suffix""#,
                r#""exists""#,
                r#""$or""#,
                r#""equals-ignore-case""#,
                r#"">=""#,
                r#""<""#,
            ])
            .prop_map(str::to_string),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(
                    ("[a-z$-]{0,8}|anything-but|numeric|prefix|\\$or", inner),
                    0..4
                )
                .prop_map(|kv| format!(
                    "{{{}}}",
                    kv.iter()
                        .map(|(k, v)| format!("{k:?}:{v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                )),
            ]
        })
    }

    proptest! {
        /// Client-supplied: any text parses or is refused naming the
        /// field, never a panic; what parses matches or not, never panics.
        #[test]
        fn any_text_parses_or_is_refused(text in policy_like(), junk in "\\PC{0,30}", value in "\\PC{0,8}") {
            for t in [&text, &junk] {
                match FilterPolicy::parse(t) {
                    Ok(p) => { let _ = p.matches(&attrs(&[("k", &value), ("a", &value)])); }
                    Err(e) => prop_assert!(e.to_string().contains("filter_policy"), "{e}"),
                }
            }
        }
    }

    /// Whether `{"k": [condition]}` matches a message without `k`.
    fn one_missing(condition: &str) -> bool {
        policy(&format!(r#"{{"k": [{condition}]}}"#)).matches(&attrs(&[("other", "x")]))
    }

    fn parse_error(json: &str) -> String {
        match FilterPolicy::parse(json) {
            Err(e @ Error::InvalidFilterPolicy { .. }) => {
                let message = e.to_string();
                assert!(message.starts_with("filter_policy"), "{message}");
                message
            }
            Err(other) => panic!("{json}: expected InvalidFilterPolicy, got {other:?}"),
            Ok(p) => panic!("{json} should not parse; got {p:?}"),
        }
    }

    #[track_caller]
    fn assert_error(json: &str, expected: &str) {
        let message = parse_error(json);
        assert!(
            message.contains(expected),
            "{json}\n  got:      {message}\n  expected: {expected}"
        );
    }

    #[test]
    fn module_doc_example_behaves_as_described() {
        let p = policy(
            r#"{
              "store": ["example_corp"],
              "price_usd": [{"numeric": [">=", 100, "<", 1000]}],
              "$or": [
                {"customer_interests": ["rugby", {"prefix": "foot"}]},
                {"event": [{"anything-but": ["order_cancelled", "order_returned"]}]}
              ]
            }"#,
        );
        let base = [("store", "example_corp"), ("price_usd", "100")];
        let with = |extra: &[(&str, &str)]| attrs(&[&base[..], extra].concat());
        assert!(p.matches(&with(&[("customer_interests", "football")])));
        assert!(p.matches(&with(&[("customer_interests", "rugby")])));
        assert!(p.matches(&with(&[("event", "order_placed")])));
        assert!(!p.matches(&with(&[("event", "order_cancelled")])));
        assert!(!p.matches(&with(&[("customer_interests", "tennis")])));
        assert!(!p.matches(&with(&[])), "neither $or branch");
        let pricey = attrs(&[
            ("store", "example_corp"),
            ("price_usd", "1000"),
            ("event", "x"),
        ]);
        assert!(!p.matches(&pricey), "upper bound is exclusive");
    }

    #[test]
    fn exact_string_matches_only_that_string() {
        assert!(one(r#""red""#, "red"));
        assert!(!one(r#""red""#, "Red"));
        assert!(!one(r#""red""#, "red "));
        assert!(
            !one(r#""5""#, "5.0"),
            "a string literal compares as a string"
        );
        assert!(one(r#""""#, ""));
        assert!(!one_missing(r#""red""#));
    }

    #[test]
    fn number_literal_matches_numerically() {
        assert!(one("5", "5"));
        assert!(one("5", "5.0"));
        assert!(one("5", "5e0"));
        assert!(one("5.0", "5"));
        assert!(one("-0.5", "-0.50"));
        assert!(one("0", "-0"));
        assert!(!one("5", "5.1"));
        assert!(!one("5", "five"));
        assert!(!one("5", ""));
        assert!(!one_missing("5"));
    }

    #[test]
    fn infinities_and_nan_are_not_numbers() {
        for value in ["inf", "-inf", "infinity", "NaN", "nan"] {
            assert!(!one(r#"{"numeric": [">", 0]}"#, value), "{value}");
            assert!(!one(r#"{"numeric": ["<", 0]}"#, value), "{value}");
            assert!(one(r#"{"anything-but": 0}"#, value), "{value} is not 0");
        }
    }

    #[test]
    fn prefix_and_suffix() {
        assert!(one(r#"{"prefix": "eu-"}"#, "eu-west-1"));
        assert!(one(r#"{"prefix": "eu-"}"#, "eu-"));
        assert!(!one(r#"{"prefix": "eu-"}"#, "us-east-1"));
        assert!(!one(r#"{"prefix": "eu-"}"#, "EU-west"));
        assert!(!one_missing(r#"{"prefix": "eu-"}"#));
        assert!(one(r#"{"suffix": ".jpg"}"#, "cat.jpg"));
        assert!(!one(r#"{"suffix": ".jpg"}"#, "cat.png"));
        assert!(!one(r#"{"suffix": ".jpg"}"#, "jpg"));
        assert!(!one_missing(r#"{"suffix": ".jpg"}"#));
    }

    #[test]
    fn equals_ignore_case() {
        assert!(one(r#"{"equals-ignore-case": "Red"}"#, "red"));
        assert!(one(r#"{"equals-ignore-case": "Red"}"#, "RED"));
        assert!(one(r#"{"equals-ignore-case": "straße"}"#, "STRAßE"));
        assert!(one(r#"{"equals-ignore-case": "ÉTÉ"}"#, "été"));
        assert!(!one(r#"{"equals-ignore-case": "Red"}"#, "reds"));
        assert!(!one(r#"{"equals-ignore-case": "Red"}"#, "re"));
        assert!(!one_missing(r#"{"equals-ignore-case": "Red"}"#));
    }

    #[test]
    fn anything_but_a_string() {
        assert!(one(r#"{"anything-but": "red"}"#, "blue"));
        assert!(one(r#"{"anything-but": "red"}"#, "Red"));
        assert!(!one(r#"{"anything-but": "red"}"#, "red"));
        assert!(
            !one_missing(r#"{"anything-but": "red"}"#),
            "absent is not 'anything but'"
        );
    }

    #[test]
    fn anything_but_a_number_excludes_numerically_equal_values() {
        assert!(!one(r#"{"anything-but": 5}"#, "5"));
        assert!(!one(r#"{"anything-but": 5}"#, "5.00"));
        assert!(one(r#"{"anything-but": 5}"#, "6"));
        assert!(one(r#"{"anything-but": 5}"#, "five"));
        assert!(!one_missing(r#"{"anything-but": 5}"#));
    }

    #[test]
    fn anything_but_a_list() {
        let c = r#"{"anything-but": ["red", "blue", 7]}"#;
        assert!(!one(c, "red"));
        assert!(!one(c, "blue"));
        assert!(!one(c, "7.0"));
        assert!(one(c, "green"));
        assert!(one(c, "8"));
        assert!(!one_missing(c));
    }

    #[test]
    fn anything_but_a_prefix() {
        let c = r#"{"anything-but": {"prefix": "test-"}}"#;
        assert!(one(c, "prod-1"));
        assert!(one(c, "test"));
        assert!(!one(c, "test-1"));
        assert!(!one_missing(c));
    }

    #[test]
    fn numeric_single_bounds() {
        let cases = [
            (r#"[">", 10]"#, [false, false, true]),
            (r#"[">=", 10]"#, [false, true, true]),
            (r#"["<", 10]"#, [true, false, false]),
            (r#"["<=", 10]"#, [true, true, false]),
            (r#"["=", 10]"#, [false, true, false]),
        ];
        for (operand, expected) in cases {
            let c = format!(r#"{{"numeric": {operand}}}"#);
            let got = ["9.5", "10", "10.5"].map(|v| one(&c, v));
            assert_eq!(got, expected, "{operand}");
            assert!(!one(&c, "ten"), "{operand}: not a number");
            assert!(!one_missing(&c), "{operand}: missing");
        }
        assert!(one(r#"{"numeric": ["=", 10]}"#, "1e1"));
    }

    #[test]
    fn numeric_ranges_honour_each_bound() {
        let cases = [
            (r#"[">", 0, "<", 100]"#, [false, false, true, false, false]),
            (r#"[">=", 0, "<", 100]"#, [false, true, true, false, false]),
            (r#"[">", 0, "<=", 100]"#, [false, false, true, true, false]),
            (r#"[">=", 0, "<=", 100]"#, [false, true, true, true, false]),
        ];
        for (operand, expected) in cases {
            let c = format!(r#"{{"numeric": {operand}}}"#);
            let got = ["-1", "0", "50", "100", "101"].map(|v| one(&c, v));
            assert_eq!(got, expected, "{operand}");
        }
        assert!(
            one(r#"{"numeric": [">=", 5, "<=", 5]}"#, "5"),
            "a closed point range"
        );
        assert!(one(r#"{"numeric": [">", -1.5, "<", -1.25]}"#, "-1.3"));
    }

    #[test]
    fn exists() {
        assert!(one(r#"{"exists": true}"#, "anything"));
        assert!(one(r#"{"exists": true}"#, ""));
        assert!(!one_missing(r#"{"exists": true}"#));
        assert!(!one(r#"{"exists": false}"#, "anything"));
        assert!(one_missing(r#"{"exists": false}"#));
    }

    #[test]
    fn exists_false_ors_with_other_conditions() {
        let c = r#""red", {"exists": false}"#;
        assert!(one(c, "red"));
        assert!(one_missing(c));
        assert!(!one(c, "blue"));
    }

    #[test]
    fn conditions_of_one_key_are_ored() {
        let c = r#""red", {"prefix": "bl"}, 7"#;
        assert!(one(c, "red"));
        assert!(one(c, "blue"));
        assert!(one(c, "7"));
        assert!(!one(c, "green"));
    }

    #[test]
    fn keys_are_anded() {
        let p = policy(r#"{"color": ["red"], "size": [{"numeric": [">", 3]}]}"#);
        assert!(p.matches(&attrs(&[("color", "red"), ("size", "4"), ("extra", "x")])));
        assert!(!p.matches(&attrs(&[("color", "red"), ("size", "2")])));
        assert!(!p.matches(&attrs(&[("color", "blue"), ("size", "4")])));
        assert!(
            !p.matches(&attrs(&[("color", "red")])),
            "a missing key fails"
        );
        assert!(!p.matches(&HashMap::new()));
    }

    #[test]
    fn or_matches_when_any_branch_does() {
        let p = policy(r#"{"$or": [{"a": ["1"]}, {"b": ["2"]}, {"c": [{"exists": true}]}]}"#);
        assert!(p.matches(&attrs(&[("a", "1")])));
        assert!(p.matches(&attrs(&[("b", "2")])));
        assert!(p.matches(&attrs(&[("c", "")])));
        assert!(!p.matches(&attrs(&[("a", "2"), ("b", "1")])));
        assert!(!p.matches(&HashMap::new()));
    }

    #[test]
    fn or_is_anded_with_sibling_keys() {
        let p = policy(r#"{"kind": ["order"], "$or": [{"a": ["1"]}, {"b": ["2"]}]}"#);
        assert!(p.matches(&attrs(&[("kind", "order"), ("a", "1")])));
        assert!(!p.matches(&attrs(&[("kind", "refund"), ("a", "1")])));
        assert!(!p.matches(&attrs(&[("kind", "order")])));
    }

    #[test]
    fn or_nests() {
        let p = policy(
            r#"{"$or": [
                {"a": ["1"], "$or": [{"b": ["1"]}, {"c": ["1"]}]},
                {"d": ["1"]}
            ]}"#,
        );
        assert!(p.matches(&attrs(&[("a", "1"), ("c", "1")])));
        assert!(p.matches(&attrs(&[("d", "1")])));
        assert!(!p.matches(&attrs(&[("a", "1")])));
        assert!(!p.matches(&attrs(&[("b", "1"), ("c", "1")])));
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        assert_error("", "filter_policy: not valid JSON");
        assert_error(r#"{"a": ["x"]"#, "filter_policy: not valid JSON");
        assert_error(
            r#"["a"]"#,
            r#"filter_policy: expects a JSON object; got ["a"]"#,
        );
        assert_error(r#""a""#, r#"filter_policy: expects a JSON object; got "a""#);
        assert_error("null", "filter_policy: expects a JSON object; got null");
        assert_error(
            "{}",
            "filter_policy: expects a non-empty object of attribute names; got {}",
        );
    }

    #[test]
    fn rejects_key_values_that_are_not_non_empty_arrays() {
        assert_error(
            r#"{"color": "red"}"#,
            r#"filter_policy: at "color": expects a non-empty array of conditions, such as ["red"]; got "red""#,
        );
        assert_error(
            r#"{"color": []}"#,
            r#"at "color": expects a non-empty array of conditions"#,
        );
        assert_error(
            r#"{"color": 5}"#,
            r#"at "color": expects a non-empty array of conditions"#,
        );
        assert_error(
            r#"{"detail": {"color": ["red"]}}"#,
            r#"at "detail": expects a non-empty array of conditions; got {"color":["red"]} (attribute policies are flat"#,
        );
    }

    #[test]
    fn rejects_literals_that_are_not_strings_or_numbers() {
        for literal in ["null", "true", "false", r#"["red"]"#] {
            assert_error(
                &format!(r#"{{"color": ["red", {literal}]}}"#),
                &format!(
                    r#"at "color"[1]: expects a string, a number or an operator object such as {{"prefix": "eu-"}}; got {}"#,
                    literal.replace(' ', "")
                ),
            );
        }
    }

    #[test]
    fn rejects_unknown_and_malformed_operators() {
        assert_error(
            r#"{"ip": [{"cidr": "10.0.0.0/8"}]}"#,
            r#"at "ip"[0]: unknown operator "cidr"; expected one of "prefix""#,
        );
        assert_error(
            r#"{"a": [{"prefix": "x", "suffix": "y"}]}"#,
            r#"at "a"[0]: an operator object has exactly one key, such as {"prefix": "eu-"}; got {"prefix":"x","suffix":"y"}"#,
        );
        assert_error(
            r#"{"a": [{}]}"#,
            r#"at "a"[0]: an operator object has exactly one key"#,
        );
    }

    #[test]
    fn rejects_wrong_operand_types() {
        for op in ["prefix", "suffix", "equals-ignore-case"] {
            assert_error(
                &format!(r#"{{"a": [{{"{op}": 5}}]}}"#),
                &format!(r#"at "a"[0]: "{op}" expects a string; got 5"#),
            );
        }
        assert_error(
            r#"{"a": [{"exists": "yes"}]}"#,
            r#"at "a"[0]: "exists" expects true or false; got "yes""#,
        );
        assert_error(
            r#"{"a": [{"exists": null}]}"#,
            r#""exists" expects true or false; got null"#,
        );
    }

    #[test]
    fn rejects_malformed_numeric() {
        assert_error(
            r#"{"price": [{"numeric": [">"]}]}"#,
            r#"filter_policy: at "price"[0]: "numeric" expects operator/number pairs such as [">", 0, "<=", 100]; got [">"]"#,
        );
        for operand in [
            r#"5"#,
            r#"[]"#,
            r#"[">", 1, "<"]"#,
            r#"[">", "1"]"#,
            r#"[1, ">"]"#,
            r#"[">", 1, "<", 2, "=", 3]"#,
        ] {
            assert_error(
                &format!(r#"{{"price": [{{"numeric": {operand}}}]}}"#),
                r#"at "price"[0]: "numeric" expects operator/number pairs"#,
            );
        }
        assert_error(
            r#"{"price": [{"numeric": ["=>", 1]}]}"#,
            r#"at "price"[0]: "numeric" operators are "=", ">", ">=", "<" and "<="; got "=>" in ["=>",1]"#,
        );
        for operand in [
            r#"["<", 10, ">", 0]"#,
            r#"[">", 0, ">", 10]"#,
            r#"["=", 0, "<", 10]"#,
            r#"[">", 0, "=", 10]"#,
        ] {
            assert_error(
                &format!(r#"{{"price": [{{"numeric": {operand}}}]}}"#),
                r#"at "price"[0]: a two-pair "numeric" range is a lower bound (">" or ">=") then an upper bound"#,
            );
        }
        for operand in [
            r#"[">", 10, "<", 5]"#,
            r#"[">", 5, "<=", 5]"#,
            r#"[">=", 5, "<", 5]"#,
        ] {
            assert_error(
                &format!(r#"{{"price": [{{"numeric": {operand}}}]}}"#),
                r#"matches no number: its lower bound must be below its upper bound"#,
            );
        }
    }

    #[test]
    fn rejects_malformed_anything_but() {
        assert_error(
            r#"{"a": [{"anything-but": []}]}"#,
            r#"at "a"[0]: "anything-but" expects a string, a number, a non-empty list of strings and numbers, or {"prefix": "..."}; got []"#,
        );
        assert_error(
            r#"{"a": [{"anything-but": ["x", null]}]}"#,
            r#"at "a"[0]: "anything-but" lists only strings and numbers; got null in ["x",null]"#,
        );
        assert_error(
            r#"{"a": [{"anything-but": true}]}"#,
            r#""anything-but" expects a string"#,
        );
        assert_error(
            r#"{"a": [{"anything-but": {"suffix": "x"}}]}"#,
            r#""anything-but" expects a string"#,
        );
        assert_error(
            r#"{"a": [{"anything-but": {"prefix": 5}}]}"#,
            r#"at "a"[0]: "anything-but" {"prefix": ...} expects a non-empty string; got 5"#,
        );
        assert_error(
            r#"{"a": [{"anything-but": {"prefix": ""}}]}"#,
            r#"expects a non-empty string; got """#,
        );
    }

    #[test]
    fn rejects_malformed_or() {
        let expects = "expects an array of at least 2 policy objects";
        assert_error(
            r#"{"$or": [{"a": ["1"]}]}"#,
            &format!(r#"filter_policy: at "$or": {expects}; got [{{"a":["1"]}}]"#),
        );
        assert_error(r#"{"$or": []}"#, expects);
        assert_error(r#"{"$or": {"a": ["1"]}}"#, expects);
        assert_error(
            r#"{"$or": [{"a": ["1"]}, "b"]}"#,
            r#"at "$or"[1]: expects a policy object; got "b""#,
        );
        assert_error(
            r#"{"$or": [{"a": ["1"]}, {}]}"#,
            r#"at "$or"[1]: expects a non-empty object"#,
        );
    }

    #[test]
    fn errors_name_the_path_through_or() {
        assert_error(
            r#"{"$or": [{"a": ["1"]}, {"country": ["x", {"prefix": 1}]}]}"#,
            r#"filter_policy: at "$or"[1]."country"[1]: "prefix" expects a string; got 1"#,
        );
        assert_error(
            r#"{"$or": [{"a": ["1"]}, {"$or": [{"b": ["1"]}, {"c": "x"}]}]}"#,
            r#"at "$or"[1]."$or"[1]."c": expects a non-empty array"#,
        );
        assert_error(r#"{"a\"b": "x"}"#, r#"at "a\"b": "#);
    }

    #[test]
    fn rejects_dollar_keys_other_than_or_and_empty_names() {
        assert_error(
            r#"{"$and": [{"a": ["1"]}, {"b": ["2"]}]}"#,
            r#"at "$and": unknown key; "$or" is the only key that may start with "$""#,
        );
        assert_error(
            r#"{"": ["x"]}"#,
            r#"at "": attribute names are never empty"#,
        );
    }

    #[test]
    fn limits_the_number_of_conditions() {
        let values = |n: usize| (0..n).map(|i| json!(i.to_string())).collect::<Vec<_>>();
        // The limit's conditions, 50 of them in `$or` branches.
        let a = FILTER_POLICY_CONDITIONS_MAX - 50;
        let at_limit = json!({"a": values(a), "$or": [{"b": values(25)}, {"c": values(25)}]});
        assert!(FilterPolicy::parse(&at_limit.to_string()).is_ok());
        let over = json!({"a": values(a), "$or": [{"b": values(25)}, {"c": values(26)}]});
        assert_error(
            &over.to_string(),
            "filter_policy: a policy holds at most 150 conditions",
        );
        assert_error(&over.to_string(), "; got 151");
    }

    #[test]
    fn long_values_are_cut_short_in_errors() {
        let long = "x".repeat(10_000);
        let message = parse_error(&json!({ "a": long }).to_string());
        assert!(message.len() < 300, "{message}");
        assert!(message.ends_with("..."), "{message}");
    }

    // ---- property tests ----

    fn attribute_map() -> impl Strategy<Value = HashMap<String, String>> {
        prop::collection::hash_map("[a-z][a-z0-9_.-]{0,8}", "\\PC{0,12}", 1..8)
    }

    /// Small alphabets, so that prefixes, suffixes and equal values happen often.
    fn short() -> impl Strategy<Value = String> {
        "[abAB]{0,4}"
    }

    fn single(condition: Value) -> FilterPolicy {
        policy(&json!({ "k": [condition] }).to_string())
    }

    fn with_k(value: &str) -> HashMap<String, String> {
        attrs(&[("k", value)])
    }

    /// Arbitrary JSON, weighted towards the words policies are made of.
    fn json_value() -> impl Strategy<Value = Value> {
        let word = prop_oneof![
            Just("$or".to_owned()),
            Just("prefix".to_owned()),
            Just("suffix".to_owned()),
            Just("equals-ignore-case".to_owned()),
            Just("anything-but".to_owned()),
            Just("numeric".to_owned()),
            Just("exists".to_owned()),
            Just(">".to_owned()),
            Just(">=".to_owned()),
            Just("<".to_owned()),
            Just("<=".to_owned()),
            Just("=".to_owned()),
            "[a-c$]{0,3}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            word.clone().prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((word.clone(), inner), 0..4)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn exact_policy_from_a_map_matches_that_map(map in attribute_map()) {
            let object: Map<String, Value> =
                map.iter().map(|(k, v)| (k.clone(), json!([v]))).collect();
            let p = policy(&Value::Object(object).to_string());
            prop_assert!(p.matches(&map));
        }

        #[test]
        fn anything_but_excludes_exactly_its_value(v in "\\PC{0,8}", other in "\\PC{0,8}") {
            let p = single(json!({"anything-but": [v.clone()]}));
            prop_assert!(!p.matches(&with_k(&v)));
            prop_assert_eq!(p.matches(&with_k(&other)), other != v);
            prop_assert!(!p.matches(&HashMap::new()));
        }

        #[test]
        fn numeric_range_agrees_with_comparison(
            a in -1_000_000i64..1_000_000,
            width in 1i64..1_000,
            pick in 0..4u8,
            quarters in -4_000_000i64..4_000_000,
        ) {
            let b = a + width;
            // Quarters are exact in binary, so the attribute is exactly x.
            let x = match pick { 0 => a as f64, 1 => b as f64, _ => quarters as f64 / 4.0 };
            let p = single(json!({"numeric": [">=", a, "<", b]}));
            prop_assert_eq!(p.matches(&with_k(&x.to_string())), a as f64 <= x && x < b as f64);
        }

        #[test]
        fn numeric_bound_agrees_with_comparison_for_any_finite_number(
            bound in -1_000_000i64..1_000_000,
            x in prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
        ) {
            let p = single(json!({"numeric": [">", bound]}));
            prop_assert_eq!(p.matches(&with_k(&x.to_string())), x > bound as f64);
            let p = single(json!({"numeric": ["<=", bound]}));
            prop_assert_eq!(p.matches(&with_k(&x.to_string())), x <= bound as f64);
        }

        #[test]
        fn prefix_and_suffix_agree_with_str(s in short(), value in short()) {
            prop_assert_eq!(single(json!({"prefix": s})).matches(&with_k(&value)), value.starts_with(&s));
            prop_assert_eq!(single(json!({"suffix": s})).matches(&with_k(&value)), value.ends_with(&s));
            if !s.is_empty() {
                let p = single(json!({"anything-but": {"prefix": s}}));
                prop_assert_eq!(p.matches(&with_k(&value)), !value.starts_with(&s));
            }
            let p = single(json!({"equals-ignore-case": s}));
            prop_assert_eq!(p.matches(&with_k(&value)), value.eq_ignore_ascii_case(&s));
        }

        #[test]
        fn or_agrees_with_its_branches(
            a in short(), b in short(), x in short(), y in short(), with_x in any::<bool>(),
        ) {
            let p1 = json!({"x": [a]});
            let p2 = json!({"y": [{"prefix": b}]});
            let either = policy(&json!({"$or": [p1, p2]}).to_string());
            let mut message = attrs(&[("y", &y)]);
            if with_x {
                message.insert("x".into(), x);
            }
            let expected = policy(&p1.to_string()).matches(&message) || policy(&p2.to_string()).matches(&message);
            prop_assert_eq!(either.matches(&message), expected);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_strings(s in "\\PC{0,64}") {
            if let Err(e) = FilterPolicy::parse(&s) {
                prop_assert!(e.to_string().starts_with("filter_policy"));
            }
        }

        #[test]
        fn parse_never_panics_on_arbitrary_json(value in json_value(), map in attribute_map()) {
            match FilterPolicy::parse(&value.to_string()) {
                Ok(p) => { p.matches(&map); }
                Err(e) => prop_assert!(e.to_string().starts_with("filter_policy"), "{}", e),
            }
        }
    }
}
