use clap::Parser;

use super::*;

#[derive(Parser)]
#[command(args_override_self = true)]
struct TestCli {
    #[command(flatten)]
    node: NodeArgs,
}

const CLUSTER: &str = "b=127.0.0.1:9002:127.0.0.1:5002,a=127.0.0.1:9001:127.0.0.1:5001,\
                       c=127.0.0.1:9003:127.0.0.1:5003";

/// Arguments as given on the command line only (the environment of the test process
/// carries no DISTRAFT_ variable).
fn args(extra: &[&str]) -> NodeArgs {
    let mut argv = vec!["distraft", "--name", "a", "--cluster", CLUSTER];
    argv.extend_from_slice(extra);
    TestCli::try_parse_from(argv).unwrap().node
}

fn error(extra: &[&str]) -> ConfigError {
    Config::from_args(&args(extra)).unwrap_err()
}

#[test]
fn tls_files_go_together() {
    let err = error(&["--tls-cert", "node.pem"]);
    assert_eq!(err.var, "DISTRAFT_TLS_KEY", "{err}");
    let err = error(&["--tls-cert", "node.pem", "--tls-key", "key.pem"]);
    assert_eq!(err.var, "DISTRAFT_TLS_CA", "{err}");
    let err = error(&["--tls-ca", "ca.pem"]);
    assert_eq!(err.var, "DISTRAFT_TLS_CERT", "{err}");
    // All three, but unreadable: one line naming the first file.
    let err = error(&[
        "--tls-cert",
        "/nonexistent/n.pem",
        "--tls-key",
        "k",
        "--tls-ca",
        "c",
    ]);
    assert_eq!(err.var, "DISTRAFT_TLS_CERT", "{err}");
    // Empty values are unset: plaintext.
    let config = Config::from_args(&args(&["--tls-cert", "", "--tls-key", " "])).unwrap();
    assert!(config.tls.is_none());
    assert_eq!(config.peer_uri(config.me()), "http://127.0.0.1:9001");
}

#[test]
fn defaults_match_the_original() {
    let node = TestCli::try_parse_from(["distraft"]).unwrap().node;
    let config = Config::from_args(&node).unwrap();
    assert_eq!(config.name, "default");
    assert_eq!(
        (config.host.as_str(), config.raft_port),
        ("127.0.0.1", 9000)
    );
    assert_eq!(
        (config.client_host.as_str(), config.client_port),
        ("127.0.0.1", 5000)
    );
    assert_eq!(
        config.members.len(),
        1,
        "no cluster given: a single-node cluster"
    );
    assert_eq!(config.id, 1);
    assert_eq!(config.log_dir, PathBuf::from("/etc/distraft/default"));
    assert_eq!(config.timeout_spread_ratio, 2.0);
    assert_eq!(config.heartbeat_timeout, Duration::from_millis(100));
    assert_eq!(config.missed_heartbeats, 5);
    assert_eq!(config.election_timeout, Duration::from_millis(500));
    assert!(!config.reset_logs && !config.pretty_print_responses && !config.web_server_debug);
    assert_eq!(config.log_filter, "info");
    assert_eq!(config.request_rules.max_key_bytes, 4096);
    assert_eq!(config.request_rules.max_value_bytes, 1 << 20);
    assert_eq!(config.request_rules, RequestRules::default());
    assert_eq!(config.quota_bytes, 2 << 30);
}

#[test]
fn the_cluster_id_depends_on_members_and_token_only() {
    let a = Config::from_args(&args(&[])).unwrap();
    let b = Config::from_args(&args(&["--name", "b"])).unwrap();
    assert_eq!(
        a.cluster_id, b.cluster_id,
        "every member derives the same id"
    );
    let token = Config::from_args(&args(&["--cluster-token", "t"])).unwrap();
    assert_ne!(a.cluster_id, token.cluster_id);
    let other = "a=127.0.0.1:9001:127.0.0.1:5001,b=127.0.0.1:9002:127.0.0.1:5002";
    let two = Config::from_args(&args(&["--cluster", other])).unwrap();
    assert_ne!(a.cluster_id, two.cluster_id);
    // Each node's own view of the peer addresses (proxies) does not matter.
    let proxied = "b=127.0.0.1:7002:127.0.0.1:5002,a=127.0.0.1:9001:127.0.0.1:5001,\
                   c=127.0.0.1:7003:127.0.0.1:5003";
    let proxied = Config::from_args(&args(&["--cluster", proxied])).unwrap();
    assert_eq!(a.cluster_id, proxied.cluster_id);
    // Pinned: the id is persisted, so its derivation must never change.
    assert_eq!(format!("{:016x}", a.cluster_id), "210d878a050578b2");
}

#[test]
fn cluster_ids_follow_sorted_names() {
    let config = Config::from_args(&args(&[])).unwrap();
    let names: Vec<(&str, NodeId)> = config
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.id))
        .collect();
    assert_eq!(names, [("a", 1), ("b", 2), ("c", 3)]);
    assert_eq!(config.id, 1);
    assert_eq!(config.me().peer_port, 9001);
    let roster = config.registry.roster();
    assert_eq!(roster.member(3).unwrap().client_port, 5003);
    assert!(roster.member(0).is_none() && roster.member(4).is_none());
    assert_eq!(
        roster.current().map(|m| m.id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(roster.next_id(), 4);
    assert_eq!(
        roster.named("b").unwrap().grpc_uri(),
        "http://127.0.0.1:9002"
    );
}

#[test]
fn names_are_case_insensitive_like_the_original() {
    let config = Config::from_args(&args(&["--name", "B "])).unwrap();
    assert_eq!((config.name.as_str(), config.id), ("b", 2));
}

#[test]
fn old_flag_names_still_work() {
    let config = Config::from_args(&args(&["--udp-port", "7000", "--tcp-port", "7001"])).unwrap();
    assert_eq!((config.raft_port, config.client_port), (7000, 7001));
}

#[test]
fn timeouts_become_ticks() {
    let raft = Config::from_args(&args(&[])).unwrap().raft_config();
    assert_eq!(raft.heartbeat_ticks, 10);
    assert_eq!(
        (raft.election_ticks_min, raft.election_ticks_max),
        (50, 101)
    );
    assert_eq!(raft.check_quorum_ticks, 50);
    assert_eq!(raft.voters, [1, 2, 3]);

    // Short heartbeats get a finer tick instead of rounding to nothing.
    let config = Config::from_args(&args(&[
        "--heartbeat-timeout",
        "0.004",
        "--election-timeout",
        "0.02",
        "--timeout-spread-ratio",
        "1",
        "--missed-heartbeats",
        "3",
    ]))
    .unwrap();
    assert_eq!(config.tick(), Duration::from_millis(2));
    let raft = config.raft_config();
    assert_eq!(raft.heartbeat_ticks, 2);
    assert_eq!((raft.election_ticks_min, raft.election_ticks_max), (10, 11));
    assert_eq!(raft.check_quorum_ticks, 6);
}

#[test]
fn booleans_and_log_levels() {
    let config = Config::from_args(&args(&[
        "--reset-logs",
        "True",
        "--pretty-print-responses",
        "yes",
        "--web-server-debug",
        "0",
        "--log-level",
        "WARNING",
    ]))
    .unwrap();
    assert!(config.reset_logs && config.pretty_print_responses && !config.web_server_debug);
    assert_eq!(config.log_filter, "warn");
    let config = Config::from_args(&args(&["--log-level", "distraft=debug"])).unwrap();
    assert_eq!(config.log_filter, "distraft=debug");
}

#[test]
fn each_bad_value_is_one_line_naming_the_variable() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--cluster", "x=1.2.3"],
            r#"DISTRAFT_CLUSTER: "x=1.2.3" is not name=peer_host:peer_port:client_host:client_port"#,
        ),
        (
            &["--cluster", "a127.0.0.1:1:h:2"],
            r#"DISTRAFT_CLUSTER: "a127.0.0.1:1:h:2" is not name=peer_host:peer_port:client_host:client_port"#,
        ),
        (
            &["--cluster", "a=h:1:h:x"],
            r#"DISTRAFT_CLUSTER: "a=h:1:h:x" has an invalid port "x""#,
        ),
        (
            &["--cluster", " , "],
            r#"DISTRAFT_CLUSTER: " , " lists no member"#,
        ),
        (
            &["--cluster", "a=h:1:h:2,A=h:3:h:4"],
            r#"DISTRAFT_CLUSTER: "a" is listed twice"#,
        ),
        (
            &["--cluster", "a=h:1:h:2,b=h:1:h:4"],
            r#"DISTRAFT_CLUSTER: "h:1" is the peer address of both a and b: every member needs its own"#,
        ),
        (
            &["--cluster", "a=h:1:h:2,b=h:3:h:2"],
            r#"DISTRAFT_CLUSTER: "h:2" is the client address of both a and b: every member needs its own"#,
        ),
        (
            &["--name", "d"],
            r#"DISTRAFT_NAME: "d" is not in DISTRAFT_CLUSTER (members: a, b, c)"#,
        ),
        (&["--name", " "], r#"DISTRAFT_NAME: " " is empty"#),
        (&["--host", ""], r#"DISTRAFT_HOST: "" is empty"#),
        (
            &["--raft-port", "0"],
            r#"DISTRAFT_UDP_PORT: "0" is not a port number (1-65535)"#,
        ),
        (
            &["--client-port", "70000"],
            r#"DISTRAFT_TCP_PORT: "70000" is not a port number (1-65535)"#,
        ),
        (
            &["--heartbeat-timeout", "abc"],
            r#"DISTRAFT_HEARTBEAT_TIMEOUT: "abc" is not a number"#,
        ),
        (
            &["--heartbeat-timeout=-1"],
            r#"DISTRAFT_HEARTBEAT_TIMEOUT: "-1" must be a positive number of seconds"#,
        ),
        (
            &["--election-timeout", "0"],
            r#"DISTRAFT_ELECTION_TIMEOUT: "0" must be a positive number of seconds"#,
        ),
        (
            &["--election-timeout", "0.05"],
            r#"DISTRAFT_ELECTION_TIMEOUT: "0.05" must be greater than DISTRAFT_HEARTBEAT_TIMEOUT (0.100)"#,
        ),
        (
            &["--election-timeout", "1e300"],
            r#"DISTRAFT_ELECTION_TIMEOUT: "1e300" is not a usable number of seconds"#,
        ),
        (
            &["--timeout-spread-ratio", "0.5"],
            r#"DISTRAFT_TIMEOUT_SPREAD_RATIO: "0.5" must be at least 1.0"#,
        ),
        (
            &["--timeout-spread-ratio", "NaN"],
            r#"DISTRAFT_TIMEOUT_SPREAD_RATIO: "NaN" is not a number"#,
        ),
        (
            &["--missed-heartbeats", "0"],
            r#"DISTRAFT_MISSED_HEARTBEATS: "0" is not a positive integer"#,
        ),
        (
            &["--missed-heartbeats", "99999999999"],
            r#"DISTRAFT_MISSED_HEARTBEATS: "99999999999" is too large"#,
        ),
        (
            &["--reset-logs", "maybe"],
            r#"DISTRAFT_RESET_LOGS: "maybe" is not a boolean (true/false, 1/0, yes/no)"#,
        ),
        (
            &["--pretty-print-responses", "2"],
            r#"DISTRAFT_PRETTY_PRINT_RESPONSES: "2" is not a boolean (true/false, 1/0, yes/no)"#,
        ),
        (
            &["--web-server-debug", ""],
            r#"DISTRAFT_WEB_SERVER_DEBUG: "" is not a boolean (true/false, 1/0, yes/no)"#,
        ),
        (
            &["--log-level", "loud!"],
            r#"DISTRAFT_LOG_LEVEL: "loud!" is not a log level (DEBUG, INFO, WARNING, ERROR)"#,
        ),
        (
            &["--request-timeout", "0"],
            r#"DISTRAFT_REQUEST_TIMEOUT: "0" must be a positive number of seconds"#,
        ),
        (
            &["--max-key-bytes=-4"],
            r#"DISTRAFT_MAX_KEY_BYTES: "-4" is not a positive integer"#,
        ),
        (
            &["--max-value-bytes", "1MiB"],
            r#"DISTRAFT_MAX_VALUE_BYTES: "1MiB" is not a positive integer"#,
        ),
        (
            &["--snapshot-threshold", "0"],
            r#"DISTRAFT_SNAPSHOT_THRESHOLD: "0" is not a positive integer"#,
        ),
    ];
    for (extra, expected) in cases {
        let message = error(extra).to_string();
        assert_eq!(&message, expected, "for {extra:?}");
        assert!(!message.contains('\n'));
    }
}

#[test]
fn a_multiline_value_still_gives_one_line() {
    assert!(!error(&["--raft-port", "1\n2"]).to_string().contains('\n'));
}

#[test]
fn the_backup_rate_is_mib_per_second_and_zero_lifts_it() {
    let rate = |extra: &[&str]| Config::from_args(&args(extra)).unwrap().backup_rate;
    assert_eq!(rate(&[]), Some(50 * 1024 * 1024));
    assert_eq!(rate(&["--backup-rate", "0"]), None);
    assert_eq!(rate(&["--backup-rate", " 7 "]), Some(7 * 1024 * 1024));
    for bad in ["-1", "1.5", "fast", "", "2000000"] {
        let err = error(&[&format!("--backup-rate={bad}")]);
        assert_eq!(err.var, "DISTRAFT_BACKUP_RATE", "{bad}: {err}");
    }
}
