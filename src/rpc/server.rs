//! The gRPC server every node runs on its raft port: the Raft service (between nodes,
//! [`super::raft`]), the client services Kv ([`super::kv`]) and Admin ([`super::admin`]),
//! reflection and health.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use super::admin::AdminService;
use super::instrument::GrpcMetricsLayer;
use super::kv::KvService;
use super::peers::Peers;
use super::raft::RaftService;
pub use super::stop::stopped;
use crate::backup::Backups;
use crate::config::Config;
use crate::driver::DriverHandle;
use crate::limits::{
    GRPC_MAX_ADMIN_MESSAGE_BYTES, GRPC_MAX_CONCURRENT_STREAMS, GRPC_MAX_REQUESTS_PER_CONNECTION,
};
use crate::proto::v1::{
    self as pb, admin_server::AdminServer, kv_server::KvServer, raft_server::RaftServer,
};

/// The client-facing services of a node, shared by the gRPC server and the HTTP
/// gateway (which calls them in process).
#[derive(Clone)]
pub struct ClientServices {
    pub kv: Arc<KvService>,
    pub admin: Arc<AdminService>,
}

impl ClientServices {
    /// `backups`: what the backup schedule knows, for Admin.Status.
    pub fn new(
        config: Arc<Config>,
        driver: DriverHandle,
        peers: Peers,
        backups: Arc<Backups>,
    ) -> ClientServices {
        let forwarding = Arc::new(Semaphore::new(config.limits.max_forwarded_requests));
        ClientServices {
            kv: Arc::new(KvService::new(
                config.clone(),
                driver.clone(),
                peers.clone(),
                forwarding,
            )),
            admin: Arc::new(AdminService::new(config, driver, peers, backups)),
        }
    }
}

/// Serves every service on `listener` until `stop` turns true.
pub async fn serve(
    config: Arc<Config>,
    driver: DriverHandle,
    services: ClientServices,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let max = config.max_message_bytes();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    // grpcurl 1.8 still speaks the v1alpha protocol.
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;
    tokio::spawn(report_health(health_reporter, driver.clone(), stop.clone()));

    let mut server = Server::builder();
    if let Some(tls) = &config.tls {
        // Mutual TLS: every client, peer or not, must present a certificate the CA signed.
        server = server.tls_config(tls.grpc_server())?;
    }
    let raft = RaftService::new(config, driver, stop.clone());
    // At the caps, a request is refused at once (RESOURCE_EXHAUSTED) rather than
    // queued behind the others.
    server
        .layer(GrpcMetricsLayer)
        .tcp_nodelay(true)
        .max_concurrent_streams(GRPC_MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(GRPC_MAX_REQUESTS_PER_CONNECTION)
        .load_shed(true)
        .add_service(
            RaftServer::new(raft)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            KvServer::from_arc(services.kv)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            AdminServer::from_arc(services.admin)
                .max_decoding_message_size(GRPC_MAX_ADMIN_MESSAGE_BYTES),
        )
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(stop),
        )
        .await?;
    Ok(())
}

/// How often the health service's per-service answers are refreshed.
const HEALTH_EVERY: Duration = Duration::from_millis(200);

/// Keeps the gRPC health service's answers per service true: Kv and Raft are
/// SERVING only while the node takes part in Raft (not after Admin.Stop, nor while
/// out of Raft for a full disk); Admin always serves (it is how a node is started
/// again). The overall answer (service "") stays SERVING while the process runs.
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    driver: DriverHandle,
    stop: watch::Receiver<bool>,
) {
    let mut serving = None;
    let mut every = tokio::time::interval(HEALTH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !*stop.borrow() {
        every.tick().await;
        // No answer from the driver (it is gone, or stuck): not serving.
        let up = matches!(
            tokio::time::timeout(HEALTH_EVERY, driver.status()).await,
            Ok(Ok(status)) if status.up
        );
        if serving == Some(up) {
            continue;
        }
        serving = Some(up);
        if up {
            reporter.set_serving::<KvServer<KvService>>().await;
            reporter.set_serving::<RaftServer<RaftService>>().await;
        } else {
            reporter.set_not_serving::<KvServer<KvService>>().await;
            reporter.set_not_serving::<RaftServer<RaftService>>().await;
        }
    }
}
