//! Which node leads: asked of each in turn until one says so.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::Protocol;

/// The URL (one of `urls`) of the node that leads, polling until one does or `wait` has
/// passed.
pub async fn find_leader<P: Protocol>(
    protocol: &P,
    urls: &[String],
    wait: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + wait;
    loop {
        for url in urls {
            if protocol.is_leader(url).await {
                return Ok(url.clone());
            }
        }
        if Instant::now() >= deadline {
            bail!("none of {} leads (waited {wait:?})", urls.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
