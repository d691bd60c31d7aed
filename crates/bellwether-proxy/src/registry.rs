//! The registry of client connections: who is connected, to which backend, since when, how
//! many bytes each way, and for PostgreSQL whether the session is inside a transaction or holds
//! session state. Each entry also carries the token that closes its connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The live state of one connection, updated by its task without locks where it can be.
#[derive(Debug)]
pub struct ConnEntry {
    pub id: u64,
    pub client: SocketAddr,
    pub listener: SocketAddr,
    pub protocol: &'static str,
    pub since: SystemTime,
    /// The backend it is on; empty while it waits for another after its own failed.
    pub backend: Mutex<String>,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub in_transaction: AtomicBool,
    /// Work outstanding on the backend: a Redis reply, MULTI or WATCH, a blocking command or
    /// subscriber mode; a PostgreSQL query or transaction. A switch of primary waits for it.
    pub busy: AtomicBool,
    pub stateful: Mutex<Option<String>>,
    pub rehomes: AtomicU64,
    /// The BackendKeyData the client was given, and the server's current address and key: a
    /// cancel request names the first and is sent to the second.
    pub cancel: Mutex<Option<CancelRoute>>,
    /// Cancelled to close the connection now (maintenance, drain timeout, shutdown).
    pub kill: CancellationToken,
    /// Tells a Redis session to give up the commands outstanding on its server (a switch
    /// that waited long enough): reads are re-sent elsewhere, the others answered "lost".
    pub abandon: tokio::sync::Notify,
}

/// A connection as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnView {
    pub id: u64,
    pub client: String,
    pub listener: String,
    pub protocol: &'static str,
    pub backend: String,
    pub since_unix_ms: u128,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub in_transaction: bool,
    pub busy: bool,
    pub stateful: Option<String>,
    pub rehomes: u64,
}

/// Where a client's cancel request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRoute {
    pub client_key: (i32, i32),
    pub server_address: String,
    pub server_key: (i32, i32),
}

#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnEntry>>>,
    /// Signalled whenever a connection leaves, so drains can wait for an empty backend.
    pub changed: tokio::sync::Notify,
    /// Switches waiting for busy sessions to become idle; sessions signal `changed` on
    /// becoming idle only while there is one.
    watchers: std::sync::atomic::AtomicUsize,
}

/// Counts a waiter for idle sessions while it lives.
pub struct Watching<'a>(&'a Registry);

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0
            .watchers
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Registry {
    pub fn open(
        &self,
        client: SocketAddr,
        listener: SocketAddr,
        protocol: &'static str,
        backend: &str,
    ) -> Arc<ConnEntry> {
        let id = self.next.fetch_add(1, Relaxed) + 1;
        let e = Arc::new(ConnEntry {
            id,
            client,
            listener,
            protocol,
            since: SystemTime::now(),
            backend: Mutex::new(backend.to_string()),
            bytes_to_backend: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            in_transaction: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            stateful: Mutex::new(None),
            rehomes: AtomicU64::new(0),
            cancel: Mutex::new(None),
            kill: CancellationToken::new(),
            abandon: tokio::sync::Notify::new(),
        });
        self.lock().insert(id, e.clone());
        e
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnEntry>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
        self.changed.notify_waiters();
    }

    /// Tells waiters that a connection changed backend or closed.
    pub fn touch(&self) {
        self.changed.notify_waiters();
    }

    /// Registers a waiter for sessions becoming idle (see [`Registry::touch_if_watched`]).
    pub fn watch(&self) -> Watching<'_> {
        self.watchers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Watching(self)
    }

    /// Tells waiters that a session became idle, if any waits: a session becomes idle after
    /// every reply, and most of the time nobody is waiting.
    pub fn touch_if_watched(&self) {
        if self.watchers.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.touch();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections now on this backend.
    pub fn on_backend(&self, backend: &str) -> Vec<Arc<ConnEntry>> {
        self.lock()
            .values()
            .filter(|e| *e.backend.lock().unwrap_or_else(|p| p.into_inner()) == backend)
            .cloned()
            .collect()
    }

    /// The route of the session whose client was given this key.
    pub fn cancel_route(&self, client_key: (i32, i32)) -> Option<CancelRoute> {
        self.lock().values().find_map(|e| {
            e.cancel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .filter(|r| r.client_key == client_key)
        })
    }

    pub fn all(&self) -> Vec<Arc<ConnEntry>> {
        self.lock().values().cloned().collect()
    }

    pub fn view(&self) -> Vec<ConnView> {
        let mut v: Vec<ConnView> = self
            .all()
            .iter()
            .map(|e| ConnView {
                id: e.id,
                client: e.client.to_string(),
                listener: e.listener.to_string(),
                protocol: e.protocol,
                backend: e.backend.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                since_unix_ms: e
                    .since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0),
                bytes_to_backend: e.bytes_to_backend.load(Relaxed),
                bytes_to_client: e.bytes_to_client.load(Relaxed),
                in_transaction: e.in_transaction.load(Relaxed),
                busy: e.busy.load(Relaxed),
                stateful: e.stateful.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                rehomes: e.rehomes.load(Relaxed),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }
}
