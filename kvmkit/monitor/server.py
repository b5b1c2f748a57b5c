"""The QMP server: sockets, sessions and event fan-out, on its own threads.

One asyncio loop in a dedicated thread owns every connection, so a slow,
silent or vanished client only ever stalls its own coroutine.  Commands that
may wait on the VM (``stop`` waits for all vCPUs to leave KVM_RUN) run on a
single dispatch thread: like QEMU's big lock, that serialises VM-changing
commands from all clients, and it keeps the I/O loop free to deliver events
meanwhile.  Events arrive from VmControl on whatever thread emitted them and
are handed to the loop, which writes them to every negotiated client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import socket
import stat
import threading
from typing import Any

from kvmkit import __version__
from kvmkit.errors import ConfigError
from kvmkit.monitor.address import QmpAddress, check_loopback, parse_qmp_address
from kvmkit.monitor.catalog import default_commands
from kvmkit.monitor.commands import (CommandContext, CommandTable, SessionState, execute,
                                     resolve)
from kvmkit.monitor.framing import DEFAULT_MAX_SIZE, MessageSplitter, MessageTooLarge
from kvmkit.monitor.protocol import (QmpError, VersionInfo, encode, event_message, failure,
                                     greeting)
from kvmkit.vmm.api import VmControl, VmEvent

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
DEFAULT_MAX_OUTPUT = 16 << 20   # unread bytes queued for one client before it is dropped
SHUTDOWN_GRACE = 1.0            # seconds close() waits for owed replies to go out


def default_version() -> VersionInfo:
    return VersionInfo(package=f"kvmkit-{__version__}")


class _Session:
    """One client connection: protocol state plus its writer."""

    def __init__(self, state: SessionState, writer: asyncio.StreamWriter,
                 max_output: int) -> None:
        self.state = state
        self.writer = writer
        self.max_output = max_output

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message; drop the client if it stopped reading long ago."""
        if self.writer.is_closing():
            return
        transport = self.writer.transport
        if transport.get_write_buffer_size() > self.max_output:
            log.warning("QMP client %d is not reading its replies; disconnecting it",
                        self.state.number)
            transport.abort()
            return
        self.writer.write(encode(message))


class QmpServer:
    """A QEMU-compatible QMP server steering one VM through :class:`VmControl`.

    ``start()`` binds (raising :class:`ConfigError` on a bad address) and
    returns once clients can connect; ``close()`` disconnects everyone and
    removes a unix socket it created.
    """

    def __init__(self, control: VmControl, address: str | QmpAddress, *,
                 version: VersionInfo | None = None, commands: CommandTable | None = None,
                 allow_remote: bool = False, max_message: int = DEFAULT_MAX_SIZE,
                 max_output: int = DEFAULT_MAX_OUTPUT) -> None:
        self.control = control
        self.address = parse_qmp_address(address) if isinstance(address, str) else address
        self.version = version or default_version()
        self.commands = commands if commands is not None else default_commands()
        self.allow_remote = allow_remote
        self.max_message = max_message
        self.max_output = max_output
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[_Session] = set()
        self._numbers = itertools.count(1)
        self._unsubscribe: Any = None
        self._client_seen = threading.Event()
        self._bound_path: str | None = None
        self._closing = False

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("QmpServer.start() called twice")
        check_loopback(self.address, self.allow_remote)
        sock = self._bind()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="qmp-dispatch")
        self._loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run_loop, args=(sock, ready),
                                        name="qmp-monitor", daemon=True)
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            sock.close()
            self.close()
            raise
        self._unsubscribe = self.control.subscribe(self._on_event)

    def close(self) -> None:
        """Disconnect all clients and stop; safe to call more than once."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
            except (concurrent.futures.TimeoutError, RuntimeError):
                log.warning("QMP server did not shut down cleanly")
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
        if self._worker is not None:
            # A command still waiting on the VM must not hold up shutdown.
            self._worker.shutdown(wait=False, cancel_futures=True)
        if self._bound_path is not None:
            try:
                os.unlink(self._bound_path)
            except FileNotFoundError:
                pass
            self._bound_path = None

    def __enter__(self) -> "QmpServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_for_client(self, timeout: float | None = None) -> bool:
        """Block until a first client has connected (QEMU's ``server,wait=on``)."""
        return self._client_seen.wait(timeout)

    @property
    def client_count(self) -> int:
        return len(self._sessions)

    # -- sockets ---------------------------------------------------------------

    def _bind(self) -> socket.socket:
        """Bind in the caller's thread so address errors reach the caller."""
        address = self.address
        try:
            if address.kind == "unix":
                assert address.path is not None
                _remove_stale_socket(address.path)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(address.path)
                self._bound_path = address.path
            else:
                sock = socket.create_server((address.host or "", address.port or 0),
                                            family=_family(address.host), reuse_port=False)
                host, port = sock.getsockname()[:2]
                self.address = QmpAddress("tcp", host=host, port=port, wait=address.wait)
            sock.listen(16)
        except OSError as error:
            raise ConfigError(f"cannot listen for QMP on {address}: {error.strerror or error}") \
                from None
        sock.setblocking(False)
        return sock

    def _run_loop(self, sock: socket.socket, ready: concurrent.futures.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            if self.address.kind == "unix":
                start = asyncio.start_unix_server(self._serve_client, sock=sock,
                                                  limit=READ_CHUNK)
            else:
                start = asyncio.start_server(self._serve_client, sock=sock, limit=READ_CHUNK)
            self._server = loop.run_until_complete(start)
        except BaseException as error:  # noqa: BLE001 - hand it to start()
            ready.set_exception(error)
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        """Stop taking work, deliver replies already owed, then disconnect.

        ``kvmkit run`` closes its monitors the moment the VM ends, which is
        right after a ``quit`` handler returns: that client must still get
        its reply, as QEMU's clients do.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._worker is not None:
            try:        # the dispatch thread is FIFO: once this runs, earlier commands are done
                await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(self._worker, _nothing),
                    SHUTDOWN_GRACE)
            except (asyncio.TimeoutError, RuntimeError):
                pass    # a command still waits on the VM; its client gets no reply
        await asyncio.sleep(0)          # let sessions write the replies they now hold
        for session in list(self._sessions):
            session.writer.close()      # flushes what is queued, then closes
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        done, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE) if tasks else ((), ())
        for session in list(self._sessions):
            session.writer.transport.abort()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- sessions ----------------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        session = _Session(SessionState(next(self._numbers)), writer, self.max_output)
        self._sessions.add(session)
        self._client_seen.set()
        splitter = MessageSplitter(self.max_message)
        try:
            session.send(greeting(self.version))
            await writer.drain()
            while not self._closing and (data := await reader.read(READ_CHUNK)):
                for message in splitter.feed(data):
                    if self._closing:
                        break
                    session.send(await self._handle(session, message))
                await writer.drain()
        except MessageTooLarge as error:
            log.warning("QMP client %d: %s; disconnecting it", session.state.number, error)
        except (ConnectionError, OSError):
            pass        # the client went away; nothing of the VM depends on it
        except asyncio.CancelledError:
            pass        # close(): end quietly (asyncio logs cancelled client tasks)
        finally:
            self._sessions.discard(session)
            writer.close()              # graceful: replies already queued still go out
            if writer.transport.get_write_buffer_size():
                asyncio.get_running_loop().call_later(SHUTDOWN_GRACE, writer.transport.abort)

    async def _handle(self, session: _Session, message: Any) -> dict[str, Any]:
        if isinstance(message, QmpError):       # the framing layer's parse error
            return failure(message)
        call = resolve(self.commands, session.state, message)
        if isinstance(call, dict):
            return call
        context = CommandContext(self.control, self.commands, session.state, self.version)
        if not call.command.blocking:
            return execute(call, context)
        assert self._worker is not None
        return await asyncio.get_running_loop().run_in_executor(
            self._worker, execute, call, context)

    # -- events --------------------------------------------------------------------

    def _on_event(self, event: VmEvent) -> None:
        """Called by VmControl from any thread."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._broadcast, event)
        except RuntimeError:
            pass        # the loop is already closed: we are shutting down

    def _broadcast(self, event: VmEvent) -> None:
        message = event_message(event)
        for session in list(self._sessions):
            if session.state.negotiated:
                session.send(message)


def _nothing() -> None:
    pass


def _remove_stale_socket(path: str) -> None:
    """Replace a socket left by an earlier run, as QEMU does; never a file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"cannot listen for QMP on unix:{path}: it exists and is not a socket")
    os.unlink(path)


def _family(host: str | None) -> socket.AddressFamily:
    return socket.AF_INET6 if host and ":" in host else socket.AF_INET
