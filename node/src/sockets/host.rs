//! The host side of `wasi:sockets/tcp`, `tcp-create-socket` and
//! `ip-name-lookup` for guests of the pod network.
//!
//! wasmtime-wasi's bindings name its own (host-network) socket types in
//! their signatures. The resource table only knows a handle's number, so
//! our sockets live in the table as [`GuestSocket`]s and [`NameLookup`]s
//! and cross the bindings by number ([`ours`], [`theirs`]); nothing else
//! ever sees those numbers as wasmtime-wasi's types, because these
//! functions replace all of wasmtime-wasi's that take them.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{
    self, ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::{self, ShutdownType};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket;
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, Pollable, SocketError, SocketResult, TcpSocket,
};

use super::stream::{ConnectionInput, ConnectionOutput, SharedSender};
use super::{BACKLOG_MAX, Connection, Listener, SocketsCtx};

/// Adds our TCP and name lookup to `linker`, in place of wasmtime-wasi's
/// (which must be in it already: this shadows them).
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> SocketsView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    tcp_create_socket::add_to_linker::<T, Sockets>(linker, get)?;
    tcp::add_to_linker::<T, Sockets>(linker, get)?;
    ip_name_lookup::add_to_linker::<T, Sockets>(linker, get)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The [`HasData`] of our socket host functions.
pub(crate) struct Sockets;

impl HasData for Sockets {
    type Data<'a> = SocketsView<'a>;
}

/// What the socket host functions work on: the instance's resource table
/// and its pod's network.
pub(crate) struct SocketsView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) ctx: &'a SocketsCtx,
}

/// Our socket behind a handle the bindings call wasmtime-wasi's.
fn ours(socket: &Resource<TcpSocket>) -> Resource<GuestSocket> {
    Resource::new_borrow(socket.rep())
}

/// The handle the bindings expect for our socket.
fn theirs(socket: Resource<GuestSocket>) -> Resource<TcpSocket> {
    Resource::new_own(socket.rep())
}

/// A spawned piece of network work whose result the guest collects later.
struct Pending<T> {
    task: Option<tokio::task::JoinHandle<Result<T, ErrorCode>>>,
    result: Option<Result<T, ErrorCode>>,
}

impl<T: Send + 'static> Pending<T> {
    fn spawn(work: impl Future<Output = Result<T, ErrorCode>> + Send + 'static) -> Self {
        Self {
            task: Some(tokio::spawn(work)),
            result: None,
        }
    }

    /// Waits until the result is there (for the guest's pollable).
    async fn wait(&mut self) {
        if let Some(task) = self.task.as_mut() {
            let result = task.await.unwrap_or(Err(ErrorCode::Unknown));
            self.task = None;
            self.result = Some(result);
        }
    }

    /// The result, if it is there now; `None` means would-block.
    fn take(&mut self) -> Option<Result<T, ErrorCode>> {
        if let Some(task) = self.task.as_mut() {
            let mut context = Context::from_waker(Waker::noop());
            if let Poll::Ready(result) = std::pin::Pin::new(task).poll(&mut context) {
                self.task = None;
                self.result = Some(result.unwrap_or(Err(ErrorCode::Unknown)));
            }
        }
        self.result.take()
    }
}

/// Where a socket is in its life (WASI's TCP state machine).
enum State {
    Unbound,
    Bound(SocketAddr),
    Listening {
        local: SocketAddr,
        listener: Listener,
        /// A connection the guest's pollable saw arrive, for `accept`.
        arrived: Option<Connection>,
    },
    Connecting(Pending<Connection>),
    Connected {
        local: SocketAddr,
        remote: SocketAddr,
        outgoing: SharedSender,
    },
    /// A connect failed: the socket is spent.
    Closed,
}

/// The half of a two-phase call (`start-…`, `finish-…`) under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    Bind,
    Listen,
    Connect,
}

/// A guest's TCP socket in the pod network.
pub(super) struct GuestSocket {
    family: IpAddressFamily,
    state: State,
    started: Option<Started>,
    backlog: usize,
    /// Options the guest may set and read back. The pod network has no
    /// kernel socket to apply them to; its transports keep connections
    /// alive and bound their buffers themselves.
    options: Options,
}

#[derive(Clone, Copy)]
struct Options {
    keep_alive: bool,
    keep_alive_idle_ns: u64,
    keep_alive_interval_ns: u64,
    keep_alive_count: u32,
    hop_limit: u8,
    receive_buffer: u64,
    send_buffer: u64,
}

impl Default for Options {
    /// Linux's defaults.
    fn default() -> Self {
        Self {
            keep_alive: false,
            keep_alive_idle_ns: 7_200_000_000_000,
            keep_alive_interval_ns: 75_000_000_000,
            keep_alive_count: 9,
            hop_limit: 64,
            receive_buffer: super::CHUNK_BYTES_MAX as u64 * 2,
            send_buffer: super::CHUNK_BYTES_MAX as u64 * 2,
        }
    }
}

impl GuestSocket {
    fn new(family: IpAddressFamily, state: State) -> Self {
        Self {
            family,
            state,
            started: None,
            backlog: 128,
            options: Options::default(),
        }
    }

    fn start(&mut self, operation: Started) -> Result<(), ErrorCode> {
        if self.started.is_some() {
            return Err(ErrorCode::ConcurrencyConflict);
        }
        self.started = Some(operation);
        Ok(())
    }

    fn finish(&mut self, operation: Started) -> Result<(), ErrorCode> {
        if self.started != Some(operation) {
            return Err(ErrorCode::NotInProgress);
        }
        self.started = None;
        Ok(())
    }

    fn local(&self) -> Option<SocketAddr> {
        match &self.state {
            State::Bound(local)
            | State::Listening { local, .. }
            | State::Connected { local, .. } => Some(*local),
            State::Unbound | State::Connecting(_) | State::Closed => None,
        }
    }

    fn fits(&self, address: IpAddr) -> bool {
        matches!(
            (self.family, address),
            (IpAddressFamily::Ipv4, IpAddr::V4(_)) | (IpAddressFamily::Ipv6, IpAddr::V6(_))
        )
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestSocket {
    async fn ready(&mut self) {
        match &mut self.state {
            State::Connecting(pending) => pending.wait().await,
            State::Listening {
                listener, arrived, ..
            } if arrived.is_none() => *arrived = listener.connections.recv().await,
            _ => {}
        }
    }
}

impl SocketsView<'_> {
    fn socket(&mut self, socket: &Resource<TcpSocket>) -> SocketResult<&mut GuestSocket> {
        Ok(self.table.get_mut(&ours(socket))?)
    }

    /// Pushes a connection's streams as children of `socket`.
    fn streams(
        &mut self,
        socket: &Resource<GuestSocket>,
        connection: Connection,
    ) -> SocketResult<(
        Resource<DynInputStream>,
        Resource<DynOutputStream>,
        SharedSender,
    )> {
        let outgoing = SharedSender::new(connection.duplex.outgoing);
        let input: DynInputStream = Box::new(ConnectionInput::new(connection.duplex.incoming));
        let output: DynOutputStream = Box::new(ConnectionOutput::new(outgoing.clone()));
        let input = self.table.push_child(input, socket)?;
        let output = self.table.push_child(output, socket)?;
        Ok((input, output, outgoing))
    }
}

// `wasi:sockets/network` stays wasmtime-wasi's in the linker; the
// bindings ask the interfaces using it to convert its errors too.
impl network::Host for SocketsView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        error: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        // Our streams fail with no I/O error of a host socket to decode.
        self.table.get(&error)?;
        Ok(None)
    }
}

impl network::HostNetwork for SocketsView<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl tcp_create_socket::Host for SocketsView<'_> {
    fn create_tcp_socket(&mut self, family: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        self.ctx.claim()?;
        let socket = self
            .table
            .push(GuestSocket::new(family, State::Unbound))
            .inspect_err(|_| self.ctx.release())?;
        Ok(theirs(socket))
    }
}

impl tcp::Host for SocketsView<'_> {}

impl tcp::HostTcpSocket for SocketsView<'_> {
    async fn start_bind(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        local: IpSocketAddress,
    ) -> SocketResult<()> {
        self.table.get(&network)?;
        let local = SocketAddr::from(local);
        let pod_ip = self.ctx.network.pod_ip(&self.ctx.pod_uid);
        let socket = self.socket(&this)?;
        if !matches!(socket.state, State::Unbound) {
            return Err(ErrorCode::InvalidState.into());
        }
        if !socket.fits(local.ip()) {
            return Err(ErrorCode::InvalidArgument.into());
        }
        // The pod's namespace has its loopback and its pod address.
        let ip = local.ip();
        if !(ip.is_unspecified() || ip.is_loopback() || Some(ip) == pod_ip) {
            return Err(ErrorCode::AddressNotBindable.into());
        }
        socket.start(Started::Bind)?;
        let port = match self.ctx.network.bind(&self.ctx.pod_uid, local.port()) {
            Ok(port) => port,
            Err(error) => {
                self.socket(&this)?.started = None;
                return Err(error.into());
            }
        };
        self.socket(&this)?.state = State::Bound(SocketAddr::new(ip, port));
        Ok(())
    }

    fn finish_bind(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        Ok(self.socket(&this)?.finish(Started::Bind)?)
    }

    fn start_connect(
        &mut self,
        this: Resource<TcpSocket>,
        network: Resource<Network>,
        remote: IpSocketAddress,
    ) -> SocketResult<()> {
        self.table.get(&network)?;
        let remote = SocketAddr::from(remote);
        let ctx = self.ctx.clone();
        let socket = self.socket(&this)?;
        let local = match socket.state {
            State::Unbound => None,
            State::Bound(local) => Some(local),
            _ => return Err(ErrorCode::InvalidState.into()),
        };
        if remote.port() == 0 || remote.ip().is_unspecified() || !socket.fits(remote.ip()) {
            return Err(ErrorCode::InvalidArgument.into());
        }
        socket.start(Started::Connect)?;
        // An unbound socket is bound implicitly, to an ephemeral port.
        let local = match local {
            Some(local) => local,
            None => {
                let ip = ctx
                    .network
                    .pod_ip(&ctx.pod_uid)
                    .filter(|ip| ip.is_ipv4() == remote.is_ipv4())
                    .unwrap_or(remote.ip());
                match ctx.network.bind(&ctx.pod_uid, 0) {
                    Ok(port) => SocketAddr::new(ip, port),
                    Err(error) => {
                        self.socket(&this)?.started = None;
                        return Err(error.into());
                    }
                }
            }
        };
        let attempt = ctx.network.connect(&ctx.pod_uid, local, remote);
        self.socket(&this)?.state = State::Connecting(Pending::spawn(attempt));
        Ok(())
    }

    fn finish_connect(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(Resource<DynInputStream>, Resource<DynOutputStream>)> {
        let socket = self.socket(&this)?;
        if socket.started != Some(Started::Connect) {
            return Err(ErrorCode::NotInProgress.into());
        }
        let State::Connecting(pending) = &mut socket.state else {
            return Err(ErrorCode::InvalidState.into());
        };
        let Some(result) = pending.take() else {
            return Err(ErrorCode::WouldBlock.into());
        };
        socket.started = None;
        let connection = match result {
            Ok(connection) => connection,
            Err(error) => {
                socket.state = State::Closed;
                return Err(error.into());
            }
        };
        let (local, remote) = (connection.local, connection.remote);
        let (input, output, outgoing) = self.streams(&ours(&this), connection)?;
        self.socket(&this)?.state = State::Connected {
            local,
            remote,
            outgoing,
        };
        Ok((input, output))
    }

    async fn start_listen(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        let ctx = self.ctx.clone();
        let socket = self.socket(&this)?;
        // WASI 0.2: a socket is bound explicitly before it listens.
        let State::Bound(local) = socket.state else {
            return Err(ErrorCode::InvalidState.into());
        };
        socket.start(Started::Listen)?;
        match ctx
            .network
            .listen(&ctx.pod_uid, local.port(), socket.backlog)
        {
            Ok(listener) => {
                socket.state = State::Listening {
                    local,
                    listener,
                    arrived: None,
                };
                Ok(())
            }
            Err(error) => {
                socket.started = None;
                Err(error.into())
            }
        }
    }

    fn finish_listen(&mut self, this: Resource<TcpSocket>) -> SocketResult<()> {
        Ok(self.socket(&this)?.finish(Started::Listen)?)
    }

    fn accept(
        &mut self,
        this: Resource<TcpSocket>,
    ) -> SocketResult<(
        Resource<TcpSocket>,
        Resource<DynInputStream>,
        Resource<DynOutputStream>,
    )> {
        let socket = self.socket(&this)?;
        let family = socket.family;
        let options = socket.options;
        let State::Listening {
            listener, arrived, ..
        } = &mut socket.state
        else {
            return Err(ErrorCode::InvalidState.into());
        };
        let connection = match arrived.take() {
            Some(connection) => connection,
            None => listener
                .connections
                .try_recv()
                .map_err(|_| ErrorCode::WouldBlock)?,
        };
        // Past the limit the connection is dropped: its other end reads
        // end-of-stream, as after a kernel's reset.
        self.ctx.claim()?;
        let (local, remote) = (connection.local, connection.remote);
        let accepted = self
            .table
            .push(GuestSocket::new(family, State::Unbound))
            .inspect_err(|_| self.ctx.release())?;
        let (input, output, outgoing) = self.streams(&accepted, connection)?;
        let socket = self.table.get_mut(&accepted)?;
        socket.options = options;
        socket.state = State::Connected {
            local,
            remote,
            outgoing,
        };
        Ok((theirs(accepted), input, output))
    }

    fn local_address(&mut self, this: Resource<TcpSocket>) -> SocketResult<IpSocketAddress> {
        let socket = self.socket(&this)?;
        Ok(socket.local().ok_or(ErrorCode::InvalidState)?.into())
    }

    fn remote_address(&mut self, this: Resource<TcpSocket>) -> SocketResult<IpSocketAddress> {
        match self.socket(&this)?.state {
            State::Connected { remote, .. } => Ok(remote.into()),
            _ => Err(ErrorCode::InvalidState.into()),
        }
    }

    fn is_listening(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<bool> {
        let socket = self.table.get(&ours(&this))?;
        Ok(matches!(socket.state, State::Listening { .. }))
    }

    fn address_family(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<IpAddressFamily> {
        Ok(self.table.get(&ours(&this))?.family)
    }

    fn set_listen_backlog_size(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> SocketResult<()> {
        if value == 0 {
            return Err(ErrorCode::InvalidArgument.into());
        }
        // A listening socket keeps the queue it was given; the new size
        // applies if it listens again (which WASI 0.2 never does).
        self.socket(&this)?.backlog = usize::try_from(value)
            .unwrap_or(BACKLOG_MAX)
            .min(BACKLOG_MAX);
        Ok(())
    }

    fn keep_alive_enabled(&mut self, this: Resource<TcpSocket>) -> SocketResult<bool> {
        Ok(self.socket(&this)?.options.keep_alive)
    }

    fn set_keep_alive_enabled(
        &mut self,
        this: Resource<TcpSocket>,
        value: bool,
    ) -> SocketResult<()> {
        self.socket(&this)?.options.keep_alive = value;
        Ok(())
    }

    fn keep_alive_idle_time(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        Ok(self.socket(&this)?.options.keep_alive_idle_ns)
    }

    fn set_keep_alive_idle_time(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> SocketResult<()> {
        self.socket(&this)?.options.keep_alive_idle_ns = positive(value)?;
        Ok(())
    }

    fn keep_alive_interval(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        Ok(self.socket(&this)?.options.keep_alive_interval_ns)
    }

    fn set_keep_alive_interval(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> SocketResult<()> {
        self.socket(&this)?.options.keep_alive_interval_ns = positive(value)?;
        Ok(())
    }

    fn keep_alive_count(&mut self, this: Resource<TcpSocket>) -> SocketResult<u32> {
        Ok(self.socket(&this)?.options.keep_alive_count)
    }

    fn set_keep_alive_count(&mut self, this: Resource<TcpSocket>, value: u32) -> SocketResult<()> {
        self.socket(&this)?.options.keep_alive_count = positive(value)?;
        Ok(())
    }

    fn hop_limit(&mut self, this: Resource<TcpSocket>) -> SocketResult<u8> {
        Ok(self.socket(&this)?.options.hop_limit)
    }

    fn set_hop_limit(&mut self, this: Resource<TcpSocket>, value: u8) -> SocketResult<()> {
        self.socket(&this)?.options.hop_limit = positive(value)?;
        Ok(())
    }

    fn receive_buffer_size(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        Ok(self.socket(&this)?.options.receive_buffer)
    }

    fn set_receive_buffer_size(
        &mut self,
        this: Resource<TcpSocket>,
        value: u64,
    ) -> SocketResult<()> {
        self.socket(&this)?.options.receive_buffer = positive(value)?;
        Ok(())
    }

    fn send_buffer_size(&mut self, this: Resource<TcpSocket>) -> SocketResult<u64> {
        Ok(self.socket(&this)?.options.send_buffer)
    }

    fn set_send_buffer_size(&mut self, this: Resource<TcpSocket>, value: u64) -> SocketResult<()> {
        self.socket(&this)?.options.send_buffer = positive(value)?;
        Ok(())
    }

    fn subscribe(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(self.table, ours(&this))
    }

    fn shutdown(&mut self, this: Resource<TcpSocket>, how: ShutdownType) -> SocketResult<()> {
        let State::Connected { outgoing, .. } = &self.socket(&this)?.state else {
            return Err(ErrorCode::InvalidState.into());
        };
        // Receiving needs nothing: what arrives unread is dropped with the
        // input stream, as a kernel drops it after SHUT_RD.
        if matches!(how, ShutdownType::Send | ShutdownType::Both) {
            outgoing.shut_down();
        }
        Ok(())
    }

    fn drop(&mut self, this: Resource<TcpSocket>) -> wasmtime::Result<()> {
        self.table
            .delete(Resource::<GuestSocket>::new_own(this.rep()))?;
        self.ctx.release();
        Ok(())
    }
}

/// WASI rejects zero for every size and count a guest may set.
fn positive<T: Default + PartialEq>(value: T) -> Result<T, ErrorCode> {
    if value == T::default() {
        Err(ErrorCode::InvalidArgument)
    } else {
        Ok(value)
    }
}

/// A name lookup under way, or its addresses.
pub(super) struct NameLookup {
    pending: Pending<Vec<IpAddr>>,
    addresses: Option<std::vec::IntoIter<IpAddr>>,
}

#[wasmtime_wasi::async_trait]
impl Pollable for NameLookup {
    async fn ready(&mut self) {
        self.pending.wait().await;
    }
}

fn lookup(stream: &Resource<ResolveAddressStream>) -> Resource<NameLookup> {
    Resource::new_borrow(stream.rep())
}

impl ip_name_lookup::Host for SocketsView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> SocketResult<Resource<ResolveAddressStream>> {
        self.table.get(&network)?;
        if name.is_empty() || name.len() > 253 {
            return Err(ErrorCode::InvalidArgument.into());
        }
        let resolving = self.ctx.network.resolve(&self.ctx.pod_uid, &name);
        let lookup = self.table.push(NameLookup {
            pending: Pending::spawn(resolving),
            addresses: None,
        })?;
        Ok(Resource::new_own(lookup.rep()))
    }
}

impl ip_name_lookup::HostResolveAddressStream for SocketsView<'_> {
    fn resolve_next_address(
        &mut self,
        this: Resource<ResolveAddressStream>,
    ) -> SocketResult<Option<IpAddress>> {
        let lookup = self.table.get_mut(&lookup(&this))?;
        if lookup.addresses.is_none() {
            match lookup.pending.take() {
                None => return Err(ErrorCode::WouldBlock.into()),
                Some(Err(error)) => {
                    // Reported once; the stream is at its end after that.
                    lookup.addresses = Some(Vec::new().into_iter());
                    return Err(error.into());
                }
                Some(Ok(addresses)) => lookup.addresses = Some(addresses.into_iter()),
            }
        }
        Ok(lookup
            .addresses
            .as_mut()
            .and_then(Iterator::next)
            .map(IpAddress::from))
    }

    fn subscribe(
        &mut self,
        this: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(self.table, lookup(&this))
    }

    fn drop(&mut self, this: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.table
            .delete(Resource::<NameLookup>::new_own(this.rep()))?;
        Ok(())
    }
}
