//! Wall-clock times as Kubernetes writes them: RFC 3339 in UTC, whole
//! seconds (`2026-11-22T23:59:00Z`).

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::jiff::Timestamp;

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Now, as a Kubernetes timestamp.
pub fn now() -> String {
    Timestamp::from_second(unix_seconds())
        .map(|time| time.to_string())
        .unwrap_or_default()
}

/// Seconds since `text`, a Kubernetes timestamp; `None` if it is not one.
pub fn seconds_since(text: &str) -> Option<i64> {
    let then: Timestamp = text.parse().ok()?;
    Some(unix_seconds() - then.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_whole_seconds_and_parse_back() {
        let now = now();
        assert!(now.ends_with('Z') && !now.contains('.'), "{now}");
        let since = seconds_since(&now).unwrap();
        assert!((0..5).contains(&since), "{since}");
        assert_eq!(seconds_since("yesterday"), None);
    }
}
