//! Input rules shared by queue operations: names, ids, message sizes, with
//! the API's limits from `broker_proto::limits`.

use std::collections::HashMap;

use broker_proto::limits::{
    ATTRIBUTE_NAME_BYTES_MAX, ATTRIBUTES_MAX, BATCH_ENTRIES_MAX, NAME_LEN_MAX,
};

use crate::engine::error::{Error, Result, subject, truncate};

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= NAME_LEN_MAX && s.chars().all(is_name_char)
}

/// 1..=[`NAME_LEN_MAX`] characters of `[A-Za-z0-9_-]`; `field` is the
/// request field (the message calls it as [`subject`] does).
pub fn queue_name(field: &'static str, name: &str) -> Result<()> {
    name_as(field, subject(field), name)
}

/// The name rule, for a name that the message calls `what` (e.g. `queue
/// name` when a request field names an existing queue).
pub fn name_as(field: &'static str, what: &'static str, name: &str) -> Result<()> {
    if is_name(name) {
        return Ok(());
    }
    Err(Error::InvalidName {
        field,
        what,
        name: truncate(name),
    })
}

/// A batch entry id (field `entries.id`): the same rule as names.
pub fn entry_id(id: &str) -> Result<()> {
    name_as("entries.id", "entry id", id)
}

/// Batch sizes and distinct entry ids (a duplicate fails the whole batch:
/// its results could not be told apart).
pub fn batch<'a>(len: usize, ids: impl Iterator<Item = &'a str>) -> Result<()> {
    if len == 0 || len > BATCH_ENTRIES_MAX {
        return Err(Error::invalid(
            "entries",
            format!("must hold 1..={BATCH_ENTRIES_MAX} entries; got {len}"),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(len);
    for id in ids {
        if !seen.insert(id) {
            return Err(Error::DuplicateEntryId { id: id.to_string() });
        }
    }
    Ok(())
}

/// Body size, attribute count and names, against the queue's limit.
pub fn message(body: &[u8], attributes: &HashMap<String, String>, max_bytes: u32) -> Result<()> {
    if body.is_empty() {
        return Err(Error::invalid("body", "must not be empty"));
    }
    if attributes.len() > ATTRIBUTES_MAX {
        return Err(Error::TooManyAttributes {
            max: ATTRIBUTES_MAX,
            got: attributes.len(),
        });
    }
    for name in attributes.keys() {
        if name.is_empty() || name.len() > ATTRIBUTE_NAME_BYTES_MAX {
            return Err(Error::InvalidAttributeName {
                max: ATTRIBUTE_NAME_BYTES_MAX,
                name: truncate(name),
            });
        }
    }
    let size = body.len()
        + attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > max_bytes as usize {
        return Err(Error::MessageTooLarge {
            max: max_bytes,
            size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(queue_name("name", "orders-v2_x").is_ok());
        assert!(queue_name("name", &"a".repeat(NAME_LEN_MAX)).is_ok());
        assert!(queue_name("name", &"a".repeat(NAME_LEN_MAX + 1)).is_err());
        assert!(queue_name("name", "").is_err());
        let err = queue_name("name", "bad name").unwrap_err().to_string();
        assert_eq!(
            err,
            r#"name must be 1..=80 characters of [A-Za-z0-9_-]; got "bad name""#
        );
        let err = queue_name("attributes.redrive_policy.dead_letter_queue", "")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("redrive_policy.dead_letter_queue must be 1..=80"));
        let err = entry_id("a b").unwrap_err().to_string();
        assert!(err.starts_with("entry id must be 1..=80"), "{err}");
        let long = "é".repeat(101);
        match queue_name("name", &long).unwrap_err() {
            Error::InvalidName { name, .. } => assert_eq!(name.chars().count(), 103),
            other => panic!("{other:?}"),
        }
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
        assert!(batch(BATCH_ENTRIES_MAX + 1, std::iter::empty()).is_err());
        assert!(
            batch(2, ["a", "a"].into_iter())
                .unwrap_err()
                .to_string()
                .contains("\"a\" appears twice")
        );
    }
}
