//! The JSON envelope of a copy delivered without `raw_delivery`, shaped as
//! Amazon SNS's notification:
//!
//! ```json
//! {"Type": "Notification", "MessageId": "…", "Topic": "payments",
//!  "Message": "the body as UTF-8", "Timestamp": "2026-01-02T03:04:05.678Z",
//!  "MessageAttributes": {"country": {"Type": "String", "Value": "IN"}}}
//! ```
//! A body that is not valid UTF-8 is carried as standard base64, with
//! `"MessageIsBase64": true`.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Map, Value, json};

pub fn envelope(
    topic: &str,
    message_id: &str,
    body: &[u8],
    attributes: &HashMap<String, String>,
    at_ms: u64,
) -> Vec<u8> {
    let mut attrs: Vec<(&String, &String)> = attributes.iter().collect();
    attrs.sort();
    let attrs: Map<String, Value> = attrs
        .into_iter()
        .map(|(k, v)| (k.clone(), json!({"Type": "String", "Value": v})))
        .collect();
    let mut out = json!({
        "Type": "Notification",
        "MessageId": message_id,
        "Topic": topic,
        "Timestamp": rfc3339_millis(at_ms),
        "MessageAttributes": attrs,
    });
    match std::str::from_utf8(body) {
        Ok(text) => out["Message"] = json!(text),
        Err(_) => {
            out["Message"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
            out["MessageIsBase64"] = json!(true);
        }
    }
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_body_is_a_string_and_attributes_are_typed() {
        let attrs = HashMap::from([("country".to_string(), "IN".to_string())]);
        let v: Value = serde_json::from_slice(&envelope(
            "payments",
            "id-1",
            b"paid",
            &attrs,
            1_735_787_045_678,
        ))
        .unwrap();
        assert_eq!(v["Type"], "Notification");
        assert_eq!(v["MessageId"], "id-1");
        assert_eq!(v["Topic"], "payments");
        assert_eq!(v["Message"], "paid");
        assert_eq!(v["Timestamp"], "2025-01-02T03:04:05.678Z");
        assert_eq!(v["MessageAttributes"]["country"]["Value"], "IN");
        assert!(v.get("MessageIsBase64").is_none());
    }

    #[test]
    fn binary_body_is_base64() {
        let v: Value =
            serde_json::from_slice(&envelope("t", "i", &[0xff, 0xfe, 0x00], &HashMap::new(), 0))
                .unwrap();
        assert_eq!(v["Message"], "//4A");
        assert_eq!(v["MessageIsBase64"], true);
    }
}
