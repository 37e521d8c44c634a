//! Wall-clock milliseconds that follow tokio's clock.
//!
//! Stored timestamps are milliseconds since the Unix epoch (the Titan wire format). They are
//! computed from one wall-clock reading taken at first use plus the time elapsed on tokio's
//! clock since then, so tests that pause and advance tokio time see timestamps move with it.
//! A process therefore ignores wall-clock steps made after it started; timestamps are only ever
//! used for display and ordering, never for expiry decisions (those use `tokio::time::Instant`).

use std::sync::OnceLock;

use tokio::time::Instant;

/// The wall-clock reading and the tokio instant it was taken at.
static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();

/// Milliseconds since the Unix epoch, advancing with tokio's clock.
pub fn now_ms() -> u64 {
    let (wall_ms, at) = *ANCHOR.get_or_init(|| {
        #[allow(clippy::disallowed_methods)] // the one wall-clock reading
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        (wall, Instant::now())
    });
    let elapsed = Instant::now().saturating_duration_since(at);
    wall_ms.saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let a = now_ms();
        assert!(a > 1_600_000_000_000, "epoch milliseconds, got {a}");
        tokio::time::advance(Duration::from_secs(60)).await;
        let b = now_ms();
        assert!(b >= a + 60_000, "{a} -> {b}");
    }
}
