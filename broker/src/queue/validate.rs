//! Input rules shared by queue operations: names, ids, message sizes.

use std::collections::HashMap;

use crate::error::{Result, invalid};

pub const NAME_MAX: usize = 80;
pub const MAX_ATTRIBUTES: usize = 10;
pub const ATTRIBUTE_NAME_MAX: usize = 256;
pub const BATCH_MAX: usize = 100;
pub const RECEIVE_MAX: u32 = 100;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// 1..=80 characters of `[A-Za-z0-9_-]`; `field` names the request field.
pub fn queue_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME_MAX || !name.chars().all(is_name_char) {
        return invalid!(
            "{field} must be 1..={NAME_MAX} characters of [A-Za-z0-9_-]; got {:?}",
            truncate(name)
        );
    }
    Ok(())
}

/// A batch entry id: the same rule as names.
pub fn entry_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > NAME_MAX || !id.chars().all(is_name_char) {
        return invalid!(
            "entry id must be 1..={NAME_MAX} characters of [A-Za-z0-9_-]; got {:?}",
            truncate(id)
        );
    }
    Ok(())
}

/// Batch sizes and distinct entry ids (a duplicate fails the whole batch:
/// its results could not be told apart).
pub fn batch<'a>(len: usize, ids: impl Iterator<Item = &'a str>) -> Result<()> {
    if len == 0 || len > BATCH_MAX {
        return invalid!("entries must hold 1..={BATCH_MAX} entries; got {len}");
    }
    let mut seen = std::collections::HashSet::with_capacity(len);
    for id in ids {
        if !seen.insert(id) {
            return invalid!("entry ids must be distinct; {id:?} appears twice");
        }
    }
    Ok(())
}

/// Body size, attribute count and names, against the queue's limit.
pub fn message(body: &[u8], attributes: &HashMap<String, String>, max_bytes: u32) -> Result<()> {
    if body.is_empty() {
        return invalid!("body must not be empty");
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return invalid!(
            "a message has at most {MAX_ATTRIBUTES} attributes; got {}",
            attributes.len()
        );
    }
    for name in attributes.keys() {
        if name.is_empty() || name.len() > ATTRIBUTE_NAME_MAX {
            return invalid!(
                "attribute names must be 1..={ATTRIBUTE_NAME_MAX} bytes; got {:?}",
                truncate(name)
            );
        }
    }
    let size = body.len()
        + attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > max_bytes as usize {
        return invalid!(
            "message size (body plus attribute names and values) must be at most max_message_bytes = {max_bytes}; got {size}"
        );
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 100 {
        format!("{}...", s.chars().take(100).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(queue_name("name", "orders-v2_x").is_ok());
        assert!(queue_name("name", &"a".repeat(80)).is_ok());
        assert!(queue_name("name", &"a".repeat(81)).is_err());
        assert!(queue_name("name", "").is_err());
        let err = queue_name("name", "bad name").unwrap_err().to_string();
        assert_eq!(
            err,
            r#"name must be 1..=80 characters of [A-Za-z0-9_-]; got "bad name""#
        );
    }

    #[test]
    fn message_size_counts_attributes() {
        let attrs = HashMap::from([("k".to_string(), "vv".to_string())]);
        assert!(message(&[0; 1021], &attrs, 1024).is_ok());
        let err = message(&[0; 1022], &attrs, 1024).unwrap_err().to_string();
        assert!(err.contains("max_message_bytes = 1024; got 1025"), "{err}");
        assert!(message(b"", &HashMap::new(), 1024).is_err());
    }

    #[test]
    fn batches() {
        assert!(batch(2, ["a", "b"].into_iter()).is_ok());
        assert!(batch(0, [].into_iter()).is_err());
        assert!(batch(101, std::iter::empty()).is_err());
        assert!(
            batch(2, ["a", "a"].into_iter())
                .unwrap_err()
                .to_string()
                .contains("\"a\" appears twice")
        );
    }
}
