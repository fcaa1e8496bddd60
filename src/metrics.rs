//! The node's Prometheus metrics, served as text at `GET /metrics` on the client port.
//!
//! One registry per process ([`metrics()`]): a node is one process, and the places that
//! count (the WAL's fsync, the driver, the peer links, the gRPC and HTTP servers) need no
//! handle passed through every constructor. Names follow etcd's where they mean the same
//! thing, with `distraft_` in place of `etcd_`, so that etcd dashboards and alerts carry
//! over by renaming the prefix; docs/metrics.md lists every one (a test checks that).
//!
//! Two kinds of values:
//! - events counted where they happen (fsyncs, leader changes, failed proposals, requests);
//! - state read from the driver's status at scrape time ([`Metrics::observe_status`]):
//!   roles, indexes, keys, per-follower lag. A scrape therefore always shows the state of
//!   that moment, never a stale copy.

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::proto::v1::StatusResponse;

/// The content type of the text format (version 0.0.4), as Prometheus asks for it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How many leader changes the timeline keeps (the dashboard shows them).
const TIMELINE_LEN: usize = 64;

/// Every metric of the process. Field docs say what each counts; their Prometheus
/// names and help texts are in [`Metrics::new`].
pub struct Metrics {
    registry: Registry,
    // --- server: from the driver ---
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub up: IntGauge,
    pub term: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub snapshot_index: IntGauge,
    pub alarm: IntGaugeVec,
    // --- replication, leader only: what etcd leaves to "compute it yourself" ---
    pub follower_lag_entries: IntGaugeVec,
    pub follower_lag_seconds: GaugeVec,
    pub follower_last_ack_seconds: GaugeVec,
    pub quorum_ack_age_seconds: GaugeVec,
    // --- disk ---
    pub wal_fsync_seconds: Histogram,
    pub snapshot_save_seconds: Histogram,
    pub snapshot_bytes: IntGauge,
    // --- scheduled backups ---
    pub backups: IntCounterVec,
    pub backup_newest_age_seconds: GaugeVec,
    pub backup_newest_bytes: IntGauge,
    pub backup_newest_index: IntGauge,
    // --- network ---
    pub peer_round_trip_seconds: HistogramVec,
    pub grpc_handled: IntCounterVec,
    pub grpc_handling_seconds: HistogramVec,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    // --- state machine and client traffic ---
    pub keys: IntGauge,
    pub state_bytes: IntGauge,
    pub reads: IntCounterVec,
    pub writes: IntCounterVec,
    // --- watches ---
    pub watchers: IntGauge,
    pub watchers_dropped_slow: IntCounter,
    /// Leader changes seen by this node, newest last (not a metric: the dashboard's
    /// timeline).
    timeline: Mutex<VecDeque<LeaderChange>>,
}

/// One leader change as this node saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaderChange {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub term: u64,
    /// The new leader's name, empty when none is known.
    pub leader: String,
}

/// The process's metrics, created and registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Latency buckets from 0.5 ms to ~16 s (doubling), for requests and round trips.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 16).unwrap_or_default()
}

impl Metrics {
    /// A fresh set of metrics in its own registry (the process uses [`metrics()`];
    /// tests make their own).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // Every name and label set below is a constant: registering cannot fail unless
        // two metrics share a name, which the unit tests would show at once.
        fn register<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            collector: C,
        ) -> C {
            if let Err(err) = registry.register(Box::new(collector.clone())) {
                panic!("registering a metric: {err}");
            }
            collector
        }
        let gauge = |name: &str, help: &str| {
            register(
                &registry,
                IntGauge::new(name, help).expect("valid metric name"),
            )
        };
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("valid metric name"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name"),
            )
        };
        let float_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric name"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            register(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("valid metric name"),
            )
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            register(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                    .expect("valid metric name"),
            )
        };

        // process_* (resident memory, CPU seconds, open files) as every Prometheus
        // client exports them; only where /proc exists.
        #[cfg(target_os = "linux")]
        if let Err(err) = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            panic!("registering the process metrics: {err}");
        }

        Metrics {
            has_leader: gauge(
                "distraft_server_has_leader",
                "Whether this node knows a leader (1) or not (0).",
            ),
            is_leader: gauge(
                "distraft_server_is_leader",
                "Whether this node is the leader (1) or not (0).",
            ),
            up: gauge(
                "distraft_server_up",
                "Whether this node takes part in Raft (1), or is stopped (GET /stop) or out of Raft for a full disk (0).",
            ),
            term: gauge("distraft_server_term", "The current Raft term of this node."),
            leader_changes: counter(
                "distraft_server_leader_changes_seen_total",
                "The number of leader changes seen by this node.",
            ),
            proposals_committed: gauge(
                "distraft_server_proposals_committed_total",
                "The commit index: entries known committed (a gauge, as etcd's).",
            ),
            proposals_applied: gauge(
                "distraft_server_proposals_applied_total",
                "The applied index: entries applied to the state machine (a gauge, as etcd's).",
            ),
            proposals_pending: gauge(
                "distraft_server_proposals_pending",
                "Writes proposed by this node (as leader) and not yet applied.",
            ),
            proposals_failed: counter(
                "distraft_server_proposals_failed_total",
                "Writes this node proposed that failed or whose outcome became unknown.",
            ),
            snapshot_index: gauge(
                "distraft_server_snapshot_index",
                "The index of this node's newest snapshot (0: none).",
            ),
            alarm: gauge_vec(
                "distraft_server_alarm",
                "Raised alarms (1), by kind: NOSPACE while this node's disk is full.",
                &["alarm"],
            ),
            follower_lag_entries: gauge_vec(
                "distraft_replication_follower_lag_entries",
                "Leader only: entries in the leader's log that the follower is not known to hold.",
                &["follower"],
            ),
            follower_lag_seconds: float_gauge_vec(
                "distraft_replication_follower_lag_seconds",
                "Leader only: how long the oldest entry the follower lacks has been in the leader's log (0: caught up).",
                &["follower"],
            ),
            follower_last_ack_seconds: float_gauge_vec(
                "distraft_replication_follower_last_ack_seconds",
                "Leader only: time since the follower last answered an append or heartbeat.",
                &["follower"],
            ),
            quorum_ack_age_seconds: float_gauge_vec(
                "distraft_replication_quorum_ack_age_seconds",
                "Leader only: time since a majority (the leader included) last acknowledged it; what check-quorum watches.",
                &[],
            ),
            wal_fsync_seconds: histogram(
                "distraft_disk_wal_fsync_duration_seconds",
                "The latency of the WAL's fsyncs (fdatasync), one per driver turn that wrote.",
                exponential_buckets(0.0001, 2.0, 18).unwrap_or_default(),
            ),
            snapshot_save_seconds: histogram(
                "distraft_snapshot_save_total_duration_seconds",
                "The time to write and fsync a snapshot of the state machine (this node's own).",
                exponential_buckets(0.001, 2.0, 16).unwrap_or_default(),
            ),
            snapshot_bytes: gauge(
                "distraft_snapshot_size_bytes",
                "The size of the newest snapshot this node wrote.",
            ),
            backups: counter_vec(
                "distraft_backups_total",
                "Scheduled backups this node attempted while it led, by result (ok, failed).",
                &["result"],
            ),
            backup_newest_age_seconds: float_gauge_vec(
                "distraft_backup_newest_age_seconds",
                "Scheduled backups: the age of the newest backup in DISTRAFT_BACKUP_DIR (absent without one).",
                &[],
            ),
            backup_newest_bytes: gauge(
                "distraft_backup_newest_size_bytes",
                "Scheduled backups: the size of the newest backup in DISTRAFT_BACKUP_DIR (0 without one).",
            ),
            backup_newest_index: gauge(
                "distraft_backup_newest_index",
                "Scheduled backups: the index the newest backup in DISTRAFT_BACKUP_DIR reflects (0 without one).",
            ),
            peer_round_trip_seconds: histogram_vec(
                "distraft_network_peer_round_trip_time_seconds",
                "Leader only: time from sending an append or heartbeat to a peer to its answer (appends include the peer's fsync).",
                &["To"],
                latency_buckets(),
            ),
            grpc_handled: counter_vec(
                "grpc_server_handled_total",
                "gRPC requests completed by the server, by service, method and status code.",
                &["grpc_service", "grpc_method", "grpc_code"],
            ),
            grpc_handling_seconds: histogram_vec(
                "grpc_server_handling_seconds",
                "Time until the gRPC server answered (the response head), by service and method.",
                &["grpc_service", "grpc_method"],
                latency_buckets(),
            ),
            http_requests: counter_vec(
                "distraft_http_requests_total",
                "HTTP requests answered by the gateway, by route, method and status code.",
                &["route", "method", "code"],
            ),
            http_request_seconds: histogram_vec(
                "distraft_http_request_duration_seconds",
                "Time the gateway took to answer, by route and method.",
                &["route", "method"],
                latency_buckets(),
            ),
            keys: gauge(
                "distraft_mvcc_keys_total",
                "Keys in this node's state machine.",
            ),
            state_bytes: gauge(
                "distraft_mvcc_db_total_size_in_use_in_bytes",
                "Key and value bytes in this node's state machine (what DISTRAFT_QUOTA_BYTES counts).",
            ),
            reads: counter_vec(
                "distraft_kv_reads_total",
                "Reads answered to clients of this node, by consistency (linearizable, stale).",
                &["consistency"],
            ),
            writes: counter_vec(
                "distraft_kv_writes_total",
                "Writes committed for clients of this node, by operation (put, delete).",
                &["op"],
            ),
            watchers: gauge(
                "distraft_watchers",
                "Watchers registered on this node (gRPC Kv.Watch, HTTP /v1/watch long-polls and streams).",
            ),
            watchers_dropped_slow: counter(
                "distraft_watchers_dropped_slow_total",
                "Watchers dropped for falling more than DISTRAFT_WATCH_BUFFER messages behind (told where to resume).",
            ),
            timeline: Mutex::new(VecDeque::new()),
            registry,
        }
    }

    /// Sets the state-derived metrics from this node's status, just before a scrape.
    pub fn observe_status(&self, status: &StatusResponse) {
        self.has_leader.set(i64::from(!status.leader.is_empty()));
        self.is_leader.set(i64::from(status.is_leader));
        self.up.set(i64::from(status.up));
        self.term.set(saturating_i64(status.term));
        self.proposals_committed
            .set(saturating_i64(status.commit_index));
        self.proposals_applied
            .set(saturating_i64(status.last_applied));
        self.proposals_pending
            .set(saturating_i64(status.proposals_pending));
        self.snapshot_index
            .set(saturating_i64(status.snapshot_index));
        self.keys.set(saturating_i64(status.keys));
        self.state_bytes.set(saturating_i64(status.state_bytes));
        self.backup_newest_age_seconds.reset();
        let backup = status.backup.as_ref().filter(|b| !b.newest_file.is_empty());
        if let Some(backup) = backup {
            self.backup_newest_age_seconds
                .with_label_values(&[] as &[&str])
                .set(backup.newest_age_seconds);
        }
        self.backup_newest_bytes
            .set(saturating_i64(backup.map_or(0, |b| b.newest_bytes)));
        self.backup_newest_index
            .set(saturating_i64(backup.map_or(0, |b| b.newest_index)));
        self.alarm.reset();
        if !status.alarm.is_empty() {
            self.alarm
                .with_label_values(&[status.alarm.as_str()])
                .set(1);
        }
        // Followers appear only on the leader's scrape: a follower that is no longer
        // followed by this node must not keep its last lag forever.
        self.follower_lag_entries.reset();
        self.follower_lag_seconds.reset();
        self.follower_last_ack_seconds.reset();
        for (name, follower) in &status.followers {
            let label = [name.as_str()];
            self.follower_lag_entries
                .with_label_values(&label)
                .set(saturating_i64(follower.lag_entries));
            self.follower_lag_seconds
                .with_label_values(&label)
                .set(millis_to_seconds(follower.lag_ms));
            if let Some(ack) = follower.last_ack_ms {
                self.follower_last_ack_seconds
                    .with_label_values(&label)
                    .set(millis_to_seconds(ack));
            }
        }
        self.quorum_ack_age_seconds.reset();
        if let Some(age) = status.quorum_ack_ms {
            self.quorum_ack_age_seconds
                .with_label_values(&[] as &[&str])
                .set(millis_to_seconds(age));
        }
    }

    /// Counts a leader change seen by this node (`leader` empty: none known) and
    /// records it in the timeline.
    pub fn leader_changed(&self, term: u64, leader: &str) {
        self.leader_changes.inc();
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut timeline = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
        if timeline.len() == TIMELINE_LEN {
            timeline.pop_front();
        }
        timeline.push_back(LeaderChange {
            at_ms,
            term,
            leader: leader.to_string(),
        });
    }

    /// The leader changes this node saw, oldest first (at most the last 64).
    pub fn timeline(&self) -> Vec<LeaderChange> {
        let timeline = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
        timeline.iter().cloned().collect()
    }

    /// Counts one answered gRPC request (see [`crate::rpc::GrpcMetricsLayer`]).
    pub fn grpc_request(&self, service: &str, method: &str, code: tonic::Code, took: Duration) {
        self.grpc_handled
            .with_label_values(&[service, method, code_name(code)])
            .inc();
        self.grpc_handling_seconds
            .with_label_values(&[service, method])
            .observe(took.as_secs_f64());
    }

    /// Counts one answered HTTP request; `route` is one of the gateway's route names,
    /// never the raw path (keys would make unbounded label values).
    pub fn http_request(&self, route: &str, method: &str, code: u16, took: Duration) {
        let code = code.to_string();
        self.http_requests
            .with_label_values(&[route, method, code.as_str()])
            .inc();
        self.http_request_seconds
            .with_label_values(&[route, method])
            .observe(took.as_secs_f64());
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = Vec::new();
        // Encoding into a Vec fails only for metric families the registry itself would
        // have refused; fall back to an empty exposition rather than a broken one.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .is_err()
        {
            text.clear();
        }
        String::from_utf8(text).unwrap_or_default()
    }

    /// The name of every metric family this registry exports (for docs/metrics.md's
    /// test).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .gather()
            .iter()
            .map(|family| family.name().to_string())
            .collect();
        names.sort();
        names
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A gRPC status code as grpc-go spells it (`OK`, `Canceled`, `Unavailable`, ...), so
/// that `grpc_code` matches the go-grpc-prometheus series etcd exports.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn millis_to_seconds(ms: u64) -> f64 {
    Duration::from_millis(ms).as_secs_f64()
}

#[cfg(test)]
mod tests;
