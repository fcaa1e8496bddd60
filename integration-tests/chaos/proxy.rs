//! A fault-injecting network between the nodes: one TCP proxy per ordered pair of nodes.
//!
//! Node `a` reaches node `b` only through the proxy `(a, b)`: each node gets its own
//! `DISTRAFT_CLUSTER` in which every peer's port is the proxy's. Everything a node sends
//! to a peer (Raft messages, ReadIndex, client requests forwarded to the leader) travels
//! on connections that `a` opened through `(a, b)`, and `b`'s answers come back on them.
//! So "messages from `a` never reach `b`" blocks the request bytes of proxy `(a, b)`
//! and the reply bytes of proxy `(b, a)`: a one-way partition, byte for byte.
//!
//! A blocked direction either *drops* (bytes are held back, as a silent network does:
//! TCP keeps them and delivers them in order if the connection survives the partition)
//! or *rejects* (connections are closed and new ones refused, as after a reset), or
//! *loses* (bytes vanish and new connections are refused; the connections open at the
//! cut stay silent for good, even once healed, as when a container leaves its docker
//! network and comes back with another address).

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::watch,
    task::JoinSet,
};

/// What happens to bytes travelling one way through a proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flow {
    #[default]
    Open,
    /// Held back until the flow opens again.
    Drop,
    /// Connections are closed, new ones refused.
    Reject,
    /// Bytes are discarded, new connections refused; an open connection never carries
    /// a byte again (its peer's address is gone), until an end closes it.
    Lose,
}

impl Flow {
    /// Every way a direction can be cut: the nemesis picks among them.
    pub const FAULTS: [Flow; 3] = [Flow::Drop, Flow::Reject, Flow::Lose];
}

/// The two directions of one proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LinkRule {
    /// From the connecting node to the node behind the proxy.
    requests: Flow,
    /// Back from the node behind the proxy.
    replies: Flow,
}

#[derive(Clone, Copy)]
enum Direction {
    Requests,
    Replies,
}

impl LinkRule {
    fn flow(&self, direction: Direction) -> Flow {
        match direction {
            Direction::Requests => self.requests,
            Direction::Replies => self.replies,
        }
    }
}

/// The proxies of a cluster of `size` nodes.
pub struct Network {
    size: usize,
    /// `ports[a][b]`: the port node `a` dials to reach node `b` (unused for a == b).
    ports: Vec<Vec<u16>>,
    rules: Vec<Vec<watch::Sender<LinkRule>>>,
    /// The accept loops; aborted when the network is dropped. Open connections end
    /// when their rule's sender is gone or the nodes close them.
    _accepting: JoinSet<()>,
}

impl Network {
    /// Starts a proxy for every ordered pair; `raft_ports[b]` is where node `b` listens.
    pub async fn start(raft_ports: &[u16]) -> std::io::Result<Network> {
        let size = raft_ports.len();
        let mut ports = vec![vec![0; size]; size];
        let mut rules = Vec::with_capacity(size);
        let mut accepting = JoinSet::new();
        // From the harness, never port 0: the OS could hand out a port the harness chose
        // for a node that has not bound it yet.
        let mut free = crate::harness::free_ports(size * (size - 1)).into_iter();
        for (from, row) in ports.iter_mut().enumerate() {
            let mut rule_row = Vec::with_capacity(size);
            for (to, port) in row.iter_mut().enumerate() {
                let (sender, receiver) = watch::channel(LinkRule::default());
                rule_row.push(sender);
                if from == to {
                    continue;
                }
                *port = free.next().expect("one port per ordered pair");
                let listener = TcpListener::bind(("127.0.0.1", *port)).await?;
                accepting.spawn(accept_loop(listener, raft_ports[to], receiver));
            }
            rules.push(rule_row);
        }
        Ok(Network {
            size,
            ports,
            rules,
            _accepting: accepting,
        })
    }

    /// The port node `from` dials to reach node `to`.
    pub fn port(&self, from: usize, to: usize) -> u16 {
        self.ports[from][to]
    }

    /// Blocks every `(from, to)` of `cuts` ("messages from `from` never reach `to`")
    /// with `flow`, and opens every other direction.
    pub fn apply(&self, cuts: &[(usize, usize)], flow: Flow) {
        let mut wanted = vec![vec![LinkRule::default(); self.size]; self.size];
        for &(from, to) in cuts {
            wanted[from][to].requests = flow;
            wanted[to][from].replies = flow;
        }
        for (senders, rules) in self.rules.iter().zip(wanted) {
            for (sender, rule) in senders.iter().zip(rules) {
                // Only a real change wakes the connections up.
                sender.send_if_modified(|current| {
                    let changed = *current != rule;
                    *current = rule;
                    changed
                });
            }
        }
    }

    /// Opens every direction.
    pub fn heal(&self) {
        self.apply(&[], Flow::Open);
    }
}

async fn accept_loop(listener: TcpListener, upstream_port: u16, rules: watch::Receiver<LinkRule>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if matches!(rules.borrow().requests, Flow::Reject | Flow::Lose) {
            // Refused: closed before a byte is read.
            continue;
        }
        tokio::spawn(relay(inbound, upstream_port, rules.clone()));
    }
}

/// Carries one connection until either side closes it or a rule rejects it.
async fn relay(inbound: TcpStream, upstream_port: u16, rules: watch::Receiver<LinkRule>) {
    // The node behind the proxy is down: close, as its own port would refuse.
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (inbound_read, inbound_write) = inbound.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    // Either direction ending ends the connection (HTTP/2 does not half-close).
    tokio::select! {
        _ = pump(inbound_read, upstream_write, rules.clone(), Direction::Requests) => {}
        _ = pump(upstream_read, inbound_write, rules, Direction::Replies) => {}
    }
}

/// Copies bytes one way, holding each chunk while the direction drops, and returning
/// (closing the connection) once it rejects.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut rules: watch::Receiver<LinkRule>,
    direction: Direction,
) {
    let mut buffer = vec![0; 64 * 1024];
    // Once lost, a connection stays silent: bytes are read and discarded.
    let mut lost = false;
    loop {
        match rules.borrow_and_update().flow(direction) {
            Flow::Reject => return,
            Flow::Lose => lost = true,
            Flow::Open | Flow::Drop => {}
        }
        // An idle connection must notice a rejection too.
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = rules.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        let read = match read {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if lost {
            continue;
        }
        // Bounded by the rule changing, or by its sender (the network) going away.
        let flow = match rules
            .wait_for(|rule| rule.flow(direction) != Flow::Drop)
            .await
        {
            Ok(rule) => rule.flow(direction),
            Err(_) => return,
        };
        match flow {
            Flow::Reject => return,
            Flow::Lose => {
                lost = true;
                continue;
            }
            Flow::Open | Flow::Drop => {}
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// The proxy itself: forwarding, dropping (held, delivered on healing), rejecting,
/// losing.
#[tokio::test]
async fn proxies_forward_hold_and_refuse() {
    use std::time::Duration;
    use tokio::time::timeout;

    // Node 1 is an echo server; node 0 is never dialled.
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let network = Network::start(&[1, echo_port]).await.unwrap();
    let connect = || TcpStream::connect(("127.0.0.1", network.port(0, 1)));
    let mut answer = [0; 4];
    let quiet = Duration::from_millis(300);

    let mut stream = connect().await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"ping");

    // Node 1's replies never reach node 0: held back until healed.
    network.apply(&[(1, 0)], Flow::Drop);
    stream.write_all(b"held").await.unwrap();
    let held = timeout(quiet, stream.read_exact(&mut answer)).await;
    assert!(held.is_err(), "a dropped reply arrived");
    network.heal();
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"held");

    // Node 0's messages to node 1 are refused: the open connection closes, new ones too.
    network.apply(&[(0, 1)], Flow::Reject);
    let closed = timeout(quiet, stream.read(&mut answer)).await.unwrap();
    assert_eq!(closed.unwrap_or(0), 0, "a rejected connection stayed open");
    let mut refused = connect().await.unwrap();
    let _ = refused.write_all(b"lost").await;
    let closed = timeout(quiet, refused.read(&mut answer)).await.unwrap();
    assert_eq!(closed.unwrap_or(0), 0, "a new connection got through");

    network.heal();
    let mut stream = connect().await.unwrap();
    stream.write_all(b"back").await.unwrap();
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"back");

    // Lost both ways: bytes vanish, new connections are refused, and the open
    // connection stays silent after healing while a new one works.
    network.apply(&[(0, 1), (1, 0)], Flow::Lose);
    stream.write_all(b"gone").await.unwrap();
    let lost = timeout(quiet, stream.read_exact(&mut answer)).await;
    assert!(lost.is_err(), "a lost message arrived");
    let mut refused = connect().await.unwrap();
    let _ = refused.write_all(b"lost").await;
    let closed = timeout(quiet, refused.read(&mut answer)).await.unwrap();
    assert_eq!(closed.unwrap_or(0), 0, "a new connection got through");
    network.heal();
    stream.write_all(b"dead").await.unwrap();
    let dead = timeout(quiet, stream.read_exact(&mut answer)).await;
    assert!(dead.is_err(), "a lost connection came back to life");
    let mut fresh = connect().await.unwrap();
    fresh.write_all(b"anew").await.unwrap();
    fresh.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"anew");
}
