//! Planted bugs ("mutations"): each one breaks a rule that a named test must defend,
//! to show that the test can fail. They are compiled only with the cargo feature
//! `plants` (never in a normal build, where [`active`] is a constant `false` that the
//! compiler removes), and one is chosen at run time with `DISTRAFT_PLANT=<name>`, so
//! that one build serves them all, and the ordinary test run too: `scripts/test.sh`
//! builds the tests with the feature, and with no `DISTRAFT_PLANT` no plant is active.
//! `scripts/plants.sh` runs each against its test and fails unless every one is caught.

/// The bugs that can be planted; `DISTRAFT_PLANT` takes the names in
/// [`Plant::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// The leader commits an entry of an earlier term by counting its replicas
    /// (Raft §5.4.2, Figure 8).
    CommitByCountingOldTerms,
    /// A vote (and pre-vote) is granted without checking that the candidate's log is
    /// at least as up to date (§5.4.1).
    VoteWithoutLogCheck,
    /// A vote is not persisted before it is sent, so a quick restart can vote again in
    /// the same term (§5.2).
    VoteNotPersisted,
    /// The leader serves a linearizable read without confirming with a majority that
    /// it still leads (thesis §6.4).
    ReadWithoutConfirmingLeadership,
    /// The leader counts its own log towards a majority before it is persisted
    /// (thesis §10.2.1 requires the persist first).
    LeaderCountsUnpersisted,
    /// A node wiped by `DISTRAFT_RESET_LOGS` votes at once with its empty log.
    ResetNodeVotes,
    /// The Raft port stops checking that an AppendEntries' entries follow
    /// `prev_log_index` one by one.
    SkipWireValidation,
    /// A leader sends log entries evicted from its cache without reading them back
    /// from the WAL (their payloads empty).
    SkipReadBack,
    /// The data directory lock is not taken: a second process may open it.
    NoDirLock,
    /// The leader does not check DISTRAFT_QUOTA_BYTES.
    NoQuota,
    /// A full disk met by the WAL is fatal, as before the NOSPACE alarm.
    NospaceFatal,
    /// A failed WAL fsync is taken for a full disk and "recovered" from.
    FsyncErrorRecoverable,
    /// The API token, CORS origins and Host allowlist are not enforced.
    OpenApi,
    /// The gateway accepts every HTTP connection, past DISTRAFT_MAX_HTTP_CONNECTIONS.
    NoConnectionCap,
    /// The gateway waits for a request body forever.
    NoBodyTimeout,
    /// The gRPC port lets in TLS clients without a certificate.
    TlsOptionalClientCert,
    /// The leader's driver fails some writes with a storage error (INTERNAL, HTTP 500)
    /// and goes on running: a node that answers errors must not pass chaos.
    WritesFailInternally,
    /// Learners count towards the majorities of the voters (commit, ReadIndex,
    /// check-quorum), as if they were voters.
    LearnerCountsTowardQuorum,
    /// A leader proposes a membership change while an earlier one is uncommitted.
    TwoConfChangesInFlight,
    /// A new leader proposes a membership change before an entry of its term is
    /// committed (the single-server bug).
    ConfChangeWithoutNoop,
    /// A leader sends no log entries (appends or snapshots) to its highest-numbered
    /// follower; heartbeats keep that follower from campaigning, so it just falls
    /// behind for good: a liveness bug, with every safety property intact.
    LeaderStarvesFollower,
    /// A leader asked to hand over leadership sends `TimeoutNow` before the target's
    /// log has caught up with its own (so the target cannot win).
    TimeoutNowBeforeCaughtUp,
    /// The leader pairs a follower's ReadIndex answer with its request by the
    /// follower's own read id, which a restarted follower reuses.
    ReadIndexPairedByFollowerId,
    /// A vote asked for by a leadership transfer is granted even by a node that
    /// already voted for another candidate in that term ("the leader vouched for it").
    TransferVoteIgnoresEarlierVote,
    /// A leader keeps replicating to a voter it removed and counts its
    /// acknowledgements toward commit, as if it were still a voter.
    LeaderCountsRemovedVoter,
    /// A node applies a membership change only once its entry is committed, instead
    /// of as soon as it is in its log (the rule the core follows, thesis §4.1).
    ConfChangeOnCommit,
    /// A node that may not campaign keeps the leader it no longer hears from, and so
    /// its lease, ignoring the vote requests of that leader's successor.
    NonCampaignerKeepsLeader,
    /// Vote requests from any non-voter are heard, so a removed node that keeps
    /// campaigning raises the members' terms.
    NonVoterVotesHeard,
    /// A conditional write compares its expected `mod_index` with the one the key had
    /// before its last write (a stale version), on every replica alike.
    CasComparesStaleVersion,
    /// A transaction applies only the first write of its branch, on every replica
    /// alike (its answer still says the branch applied).
    TxnAppliesPartOfABranch,
    /// A write forwarded under a key of this node's making and then proposed here (this
    /// node took over as leader) is proposed without that key.
    LocalRetryForgetsForwardingKey,
    /// The state machine forgets nothing but replays nothing: a retry of a write with
    /// the same idempotency key is applied again.
    RetryAppliedTwice,
    /// A snapshot install (or a restart from disk) moves the watch history past the
    /// jump without resyncing the watchers, which silently miss the changes the
    /// snapshot jumped over.
    WatchSkipsEventAfterSnapshotInstall,
    /// A linearizable backup is served from the newest snapshot even when it is older
    /// than the read index: writes acknowledged before the backup began are missing.
    BackupServesOlderSnapshot,
    /// `force-new-cluster` runs while a quorum of the voters still answers.
    ForceIgnoresReachableQuorum,
    /// A member takes requests of a newer wire version than its own.
    WireVersionUnchecked,
    /// A backup goes as fast as its reader, whatever DISTRAFT_BACKUP_RATE says.
    BackupIgnoresPace,
}

impl Plant {
    pub const ALL: [Plant; 37] = [
        Plant::CommitByCountingOldTerms,
        Plant::VoteWithoutLogCheck,
        Plant::VoteNotPersisted,
        Plant::ReadWithoutConfirmingLeadership,
        Plant::LeaderCountsUnpersisted,
        Plant::ResetNodeVotes,
        Plant::SkipWireValidation,
        Plant::SkipReadBack,
        Plant::NoDirLock,
        Plant::NoQuota,
        Plant::NospaceFatal,
        Plant::FsyncErrorRecoverable,
        Plant::OpenApi,
        Plant::NoConnectionCap,
        Plant::NoBodyTimeout,
        Plant::TlsOptionalClientCert,
        Plant::WritesFailInternally,
        Plant::LearnerCountsTowardQuorum,
        Plant::TwoConfChangesInFlight,
        Plant::ConfChangeWithoutNoop,
        Plant::LeaderStarvesFollower,
        Plant::TimeoutNowBeforeCaughtUp,
        Plant::ReadIndexPairedByFollowerId,
        Plant::TransferVoteIgnoresEarlierVote,
        Plant::LeaderCountsRemovedVoter,
        Plant::ConfChangeOnCommit,
        Plant::NonCampaignerKeepsLeader,
        Plant::NonVoterVotesHeard,
        Plant::CasComparesStaleVersion,
        Plant::TxnAppliesPartOfABranch,
        Plant::LocalRetryForgetsForwardingKey,
        Plant::RetryAppliedTwice,
        Plant::WatchSkipsEventAfterSnapshotInstall,
        Plant::BackupServesOlderSnapshot,
        Plant::ForceIgnoresReachableQuorum,
        Plant::WireVersionUnchecked,
        Plant::BackupIgnoresPace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Plant::CommitByCountingOldTerms => "commit-by-counting-old-terms",
            Plant::VoteWithoutLogCheck => "vote-without-log-check",
            Plant::VoteNotPersisted => "vote-not-persisted",
            Plant::ReadWithoutConfirmingLeadership => "read-without-confirming-leadership",
            Plant::LeaderCountsUnpersisted => "leader-counts-unpersisted",
            Plant::ResetNodeVotes => "reset-node-votes",
            Plant::SkipWireValidation => "skip-wire-validation",
            Plant::SkipReadBack => "skip-read-back",
            Plant::NoDirLock => "no-dir-lock",
            Plant::NoQuota => "no-quota",
            Plant::NospaceFatal => "nospace-fatal",
            Plant::FsyncErrorRecoverable => "fsync-error-recoverable",
            Plant::OpenApi => "open-api",
            Plant::NoConnectionCap => "no-connection-cap",
            Plant::NoBodyTimeout => "no-body-timeout",
            Plant::TlsOptionalClientCert => "tls-optional-client-cert",
            Plant::WritesFailInternally => "writes-fail-internally",
            Plant::LearnerCountsTowardQuorum => "learner-counts-toward-quorum",
            Plant::TwoConfChangesInFlight => "two-conf-changes-in-flight",
            Plant::ConfChangeWithoutNoop => "conf-change-without-noop",
            Plant::LeaderStarvesFollower => "leader-starves-follower",
            Plant::TimeoutNowBeforeCaughtUp => "timeout-now-before-caught-up",
            Plant::ReadIndexPairedByFollowerId => "read-index-paired-by-follower-id",
            Plant::TransferVoteIgnoresEarlierVote => "transfer-vote-ignores-earlier-vote",
            Plant::LeaderCountsRemovedVoter => "leader-counts-removed-voter",
            Plant::ConfChangeOnCommit => "conf-change-on-commit",
            Plant::NonCampaignerKeepsLeader => "non-campaigner-keeps-leader",
            Plant::NonVoterVotesHeard => "non-voter-votes-heard",
            Plant::CasComparesStaleVersion => "cas-compares-stale-version",
            Plant::TxnAppliesPartOfABranch => "txn-applies-part-of-a-branch",
            Plant::LocalRetryForgetsForwardingKey => "local-retry-forgets-forwarding-key",
            Plant::RetryAppliedTwice => "retry-applied-twice",
            Plant::BackupServesOlderSnapshot => "backup-serves-older-snapshot",
            Plant::ForceIgnoresReachableQuorum => "force-ignores-reachable-quorum",
            Plant::WireVersionUnchecked => "wire-version-unchecked",
            Plant::BackupIgnoresPace => "backup-ignores-pace",
            Plant::WatchSkipsEventAfterSnapshotInstall => {
                "watch-skips-event-after-snapshot-install"
            }
        }
    }
}

/// Whether `plant` is the bug planted in this process.
#[inline]
pub fn active(plant: Plant) -> bool {
    #[cfg(feature = "plants")]
    {
        selected() == Some(plant)
    }
    #[cfg(not(feature = "plants"))]
    {
        let _ = plant;
        false
    }
}

#[cfg(feature = "plants")]
fn selected() -> Option<Plant> {
    static SELECTED: std::sync::OnceLock<Option<Plant>> = std::sync::OnceLock::new();
    *SELECTED.get_or_init(|| {
        let name = std::env::var("DISTRAFT_PLANT").ok()?;
        let plant = Plant::ALL.into_iter().find(|p| p.name() == name);
        // A typo must not pass for a plant that was not caught.
        assert!(plant.is_some(), "DISTRAFT_PLANT={name:?} names no plant");
        plant
    })
}
