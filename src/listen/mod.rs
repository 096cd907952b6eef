//! Listeners: carbon plaintext over TCP and UDP, carbon pickle over TCP.
//!
//! A listener only reads, frames, decodes and hands batches on through an [`Ingest`](crate::ingest::Ingest). It
//! waits on nothing but its own socket and, for TCP, a full worker queue. Sockets come in
//! already bound ([`BoundListener`]), so tests bind port 0 and systemd socket activation is
//! the same case.
//!
//! On shutdown each connection reads what the kernel has already buffered (without waiting
//! for more), processes the complete lines or frames in it, and closes.

mod http;
mod tcp;
mod udp;

pub use tcp::{READ_MAX, READ_MIN};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ListenerConfig, Protocol, Transport};
use crate::datapoint::Kind;
use crate::ingest::Pipeline;

/// A bound listening socket and what it speaks.
#[derive(Debug)]
pub enum BoundListener {
    /// A TCP listener (plaintext or pickle).
    Tcp {
        /// Input protocol.
        protocol: Protocol,
        /// The bound socket.
        listener: std::net::TcpListener,
    },
    /// A UDP socket (plaintext).
    Udp(std::net::UdpSocket),
}

impl BoundListener {
    /// Binds the socket a listener config names.
    pub fn bind(cfg: &ListenerConfig) -> std::io::Result<BoundListener> {
        Ok(match cfg.transport {
            Transport::Tcp => BoundListener::Tcp {
                protocol: cfg.protocol,
                listener: std::net::TcpListener::bind(cfg.address.as_str())?,
            },
            Transport::Udp => BoundListener::Udp(std::net::UdpSocket::bind(cfg.address.as_str())?),
        })
    }

    /// The listeners systemd passed by socket activation (`LISTEN_FDS`), matched to the
    /// `[[listen]]` entries in order (the i-th socket of the `.socket` unit serves the i-th
    /// entry, whose address is then ignored); entries without a passed socket are bound
    /// from the config. Without socket activation this is [`BoundListener::bind_all`].
    ///
    /// Errors: a passed socket of the wrong kind (stream for a UDP entry or the reverse),
    /// or a bind failure.
    pub fn from_systemd_or_bind(cfgs: &[ListenerConfig]) -> std::io::Result<Vec<BoundListener>> {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() == 0 {
            return BoundListener::bind_all(cfgs);
        }
        tracing::info!(
            sockets = fds.len(),
            "socket activation: listeners passed by systemd"
        );
        let mut out = Vec::new();
        for (i, c) in cfgs.iter().enumerate() {
            let passed = match c.transport {
                Transport::Tcp => fds
                    .take_tcp_listener(i)?
                    .map(|listener| BoundListener::Tcp {
                        protocol: c.protocol,
                        listener,
                    }),
                Transport::Udp => fds.take_udp_socket(i)?.map(BoundListener::Udp),
            };
            match passed {
                Some(l) => out.push(l),
                None => out.push(BoundListener::bind(c)?),
            }
        }
        Ok(out)
    }

    /// Binds every listener of a config.
    pub fn bind_all(cfgs: &[ListenerConfig]) -> std::io::Result<Vec<BoundListener>> {
        cfgs.iter()
            .map(|c| {
                BoundListener::bind(c).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot bind {}: {e}", c.address))
                })
            })
            .collect()
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            BoundListener::Tcp { listener, .. } => listener.local_addr(),
            BoundListener::Udp(s) => s.local_addr(),
        }
    }

    /// What it receives: `plaintext/tcp`, `pickle/tcp`, `plaintext/udp` or `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            BoundListener::Tcp {
                protocol: Protocol::Plaintext,
                ..
            } => Kind::PlaintextTcp.as_str(),
            BoundListener::Tcp {
                protocol: Protocol::Pickle,
                ..
            } => Kind::PickleTcp.as_str(),
            BoundListener::Tcp {
                protocol: Protocol::Http,
                ..
            } => "http",
            BoundListener::Udp(_) => Kind::PlaintextUdp.as_str(),
        }
    }

    /// Serves this listener (number `index` in the config, at most `max_connections` open
    /// at once if given) until `shutdown`; connection tasks are spawned on `tracker`.
    pub(crate) fn serve(
        self,
        index: u16,
        max_connections: Option<usize>,
        pipeline: Arc<Pipeline>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<()> {
        match self {
            BoundListener::Tcp {
                protocol: Protocol::Http,
                listener,
            } => {
                listener.set_nonblocking(true)?;
                let l = tokio::net::TcpListener::from_std(listener)?;
                tracker.spawn(http::serve(l, index, pipeline, shutdown));
            }
            BoundListener::Tcp { protocol, listener } => {
                listener.set_nonblocking(true)?;
                let l = tokio::net::TcpListener::from_std(listener)?;
                let kind = match protocol {
                    Protocol::Pickle => Kind::PickleTcp,
                    _ => Kind::PlaintextTcp,
                };
                tracker.spawn(tcp::accept_loop(
                    l,
                    index,
                    kind,
                    max_connections,
                    pipeline,
                    shutdown,
                    tracker.clone(),
                ));
            }
            BoundListener::Udp(sock) => {
                sock.set_nonblocking(true)?;
                let s = tokio::net::UdpSocket::from_std(sock)?;
                tracker.spawn(udp::serve(s, index, pipeline, shutdown));
            }
        }
        Ok(())
    }
}
