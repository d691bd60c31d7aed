//! The TLS listener `axum::serve` runs on: connections whose handshake has completed.

use std::net::SocketAddr;

use bellwether_tls::TlsIncoming;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// `TlsIncoming` as an axum listener.
pub(crate) struct Tls(pub(crate) TlsIncoming);

impl axum::serve::Listener for Tls {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.accept().await {
            Some(c) => c,
            // The accept loop only ends when this listener is dropped; never resolve before.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.0.local_addr())
    }
}
