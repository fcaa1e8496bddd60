//! Rate-limited logging of refused Raft traffic: a peer (or an attacker) sending a
//! stream of bad messages gets each kind logged once per interval, with a count of
//! what was suppressed, instead of flooding the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::Status;
use tracing::warn;

use crate::config::Config;

/// A given source and kind of refusal is logged at most once per interval.
const INTERVAL: Duration = Duration::from_secs(5);
/// Sources remembered at most (names are checked against the member list, so this
/// only bounds the kinds per member).
const MAX_KEYS: usize = 256;

struct Window {
    logged_at: Instant,
    suppressed: u64,
}

#[derive(Default)]
pub struct Refusals {
    windows: Mutex<HashMap<(String, &'static str), Window>>,
}

impl Refusals {
    /// Notes that `what` (a request, or a response to our request) claiming to come
    /// from `claimed_from` was refused with `status`; logs it unless the same source and
    /// kind were logged within the interval.
    pub fn note(&self, config: &Config, claimed_from: &str, what: &'static str, status: &Status) {
        // A stranger's name is not worth a slot of its own (nor trusted in the log).
        let source = match config.registry.roster().named(claimed_from) {
            Some(member) => member.name.clone(),
            None => "a non-member".to_string(),
        };
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() >= MAX_KEYS {
            windows.retain(|_, w| w.logged_at.elapsed() < INTERVAL);
        }
        let now = Instant::now();
        let key = (source, what);
        if let Some(window) = windows.get_mut(&key) {
            if now.duration_since(window.logged_at) < INTERVAL {
                window.suppressed += 1;
                return;
            }
        }
        if windows.len() >= MAX_KEYS && !windows.contains_key(&key) {
            return;
        }
        let suppressed = windows.get(&key).map_or(0, |w| w.suppressed);
        warn!(
            from = %key.0,
            suppressed,
            "refused {what} ({:?}): {}",
            status.code(),
            status.message()
        );
        windows.insert(
            key,
            Window {
                logged_at: now,
                suppressed: 0,
            },
        );
    }
}
