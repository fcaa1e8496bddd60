//! How long a client request (or a ReadIndex asked by a follower) may take.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Status};

use crate::raft::NodeId;

/// How much earlier than the client's own deadline a request gives up (at most).
const CLIENT_DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// How long a client request may take: the node's request timeout, or less when the
/// client set a shorter deadline (`grpc-timeout`).
pub(super) struct Deadline {
    pub(super) at: Instant,
    timeout: Duration,
    /// The client's own deadline is the binding one.
    client_bound: bool,
}

impl Deadline {
    pub(super) fn of<T>(request: &Request<T>, request_timeout: Duration) -> Deadline {
        let client = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            // Answer a little before the client's deadline, so that our explanation
            // reaches it rather than a bare cancellation.
            .map(|client| client.saturating_sub((client / 10).min(CLIENT_DEADLINE_MARGIN)));
        let (timeout, client_bound) = match client {
            Some(client) if client < request_timeout => (client, true),
            _ => (request_timeout, false),
        };
        Deadline {
            at: Instant::now() + timeout,
            timeout,
            client_bound,
        }
    }

    pub(super) fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The answer once the deadline has passed; a write may still commit later.
    pub(super) fn expired(&self, write: bool) -> Status {
        let outcome = if write {
            "; the write may or may not have been applied"
        } else {
            ""
        };
        let message = format!(
            "no leader with a majority answered within {:.1?}{outcome}",
            self.timeout
        );
        if self.client_bound {
            Status::deadline_exceeded(message)
        } else {
            Status::unavailable(message)
        }
    }
}

/// Pause between attempts while the cluster has no leader, doubling up to the max;
/// cut short when this node learns of a leader.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(100);

/// The pauses of a request that waits for a leader (writes, reads, transfers).
pub(super) struct Backoff {
    pause: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff { pause: RETRY_MIN }
    }

    /// Waits out the next pause, or less if `leader` changes meanwhile; fails with
    /// the deadline's answer (see [`Deadline::expired`]) when the deadline would pass
    /// first.
    pub(super) async fn wait(
        &mut self,
        deadline: &Deadline,
        leader: &mut watch::Receiver<Option<NodeId>>,
        write: bool,
    ) -> Result<(), Status> {
        if deadline.remaining() <= self.pause {
            return Err(deadline.expired(write));
        }
        // A closed watch (the driver has ended) is no news: only a real change cuts the
        // pause short, or the caller's loop would spin until its deadline.
        tokio::select! {
            () = tokio::time::sleep(self.pause) => {}
            Ok(()) = leader.changed() => {}
        }
        self.pause = (self.pause * 2).min(RETRY_MAX);
        Ok(())
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn the_shorter_deadline_binds_and_answers_before_the_client_gives_up() {
        let own = Duration::from_secs(3);
        let plain = Deadline::of(&Request::new(()), own);
        assert_eq!((plain.timeout, plain.client_bound), (own, false));
        assert_eq!(plain.expired(false).code(), Code::Unavailable);

        let mut request = Request::new(());
        request.set_timeout(Duration::from_millis(1000));
        let client = Deadline::of(&request, own);
        assert_eq!(
            (client.timeout, client.client_bound),
            (Duration::from_millis(950), true)
        );
        let status = client.expired(true);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status
            .message()
            .contains("may or may not have been applied"));

        let mut request = Request::new(());
        request.set_timeout(Duration::from_secs(10));
        assert_eq!(Deadline::of(&request, own).timeout, own);
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(
            parse_grpc_timeout("2999m"),
            Some(Duration::from_millis(2999))
        );
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
