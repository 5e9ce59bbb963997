//! A connection's two halves as the guest's `wasi:io` streams.
//!
//! The output half shares its sender with the socket, so `shutdown(send)`
//! ends the stream (the other end reads end-of-stream) while the guest
//! still holds the output stream.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

use super::CHUNK_BYTES_MAX;

/// The sending half of a connection; `None` once shut down.
#[derive(Clone)]
pub(super) struct SharedSender(Arc<Mutex<Option<mpsc::Sender<Bytes>>>>);

impl SharedSender {
    pub(super) fn new(sender: mpsc::Sender<Bytes>) -> Self {
        Self(Arc::new(Mutex::new(Some(sender))))
    }

    fn get(&self) -> Option<mpsc::Sender<Bytes>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ends the stream: the other end reads end-of-stream once it has
    /// read what was sent before.
    pub(super) fn shut_down(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// The guest's input stream of a connection.
pub(super) struct ConnectionInput {
    incoming: mpsc::Receiver<Bytes>,
    /// What was received and not yet read.
    pending: Bytes,
    /// The other end finished sending.
    ended: bool,
}

impl ConnectionInput {
    pub(super) fn new(incoming: mpsc::Receiver<Bytes>) -> Self {
        Self {
            incoming,
            pending: Bytes::new(),
            ended: false,
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for ConnectionInput {
    async fn ready(&mut self) {
        if self.pending.is_empty() && !self.ended {
            match self.incoming.recv().await {
                Some(chunk) => self.pending = chunk,
                None => self.ended = true,
            }
        }
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for ConnectionInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if self.pending.is_empty() && !self.ended {
            match self.incoming.try_recv() {
                Ok(chunk) => self.pending = chunk,
                Err(mpsc::error::TryRecvError::Empty) => return Ok(Bytes::new()),
                Err(mpsc::error::TryRecvError::Disconnected) => self.ended = true,
            }
        }
        if self.pending.is_empty() && self.ended {
            return Err(StreamError::Closed);
        }
        let size = size.min(self.pending.len());
        Ok(self.pending.split_to(size))
    }
}

/// The guest's output stream of a connection.
pub(super) struct ConnectionOutput {
    outgoing: SharedSender,
}

impl ConnectionOutput {
    pub(super) fn new(outgoing: SharedSender) -> Self {
        Self { outgoing }
    }

    fn sender(&self) -> StreamResult<mpsc::Sender<Bytes>> {
        match self.outgoing.get() {
            Some(sender) if !sender.is_closed() => Ok(sender),
            _ => Err(StreamError::Closed),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for ConnectionOutput {
    async fn ready(&mut self) {
        // Ready when a chunk fits, or when writing would fail at once.
        if let Ok(sender) = self.sender() {
            drop(sender.reserve().await);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for ConnectionOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.len() > CHUNK_BYTES_MAX {
            return Err(StreamError::trap("write larger than check-write allowed"));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        match self.sender()?.try_send(bytes) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(StreamError::trap("write without check-write permission"))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StreamError::Closed),
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Chunks are handed over whole on write; there is no buffer here.
        self.sender().map(drop)
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let sender = self.sender()?;
        Ok(if sender.capacity() > 0 {
            CHUNK_BYTES_MAX
        } else {
            0
        })
    }
}
