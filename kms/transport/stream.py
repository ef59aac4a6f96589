"""A trio Stream that speaks Secret Connection over another stream (usually TCP)."""

# Theory of operation
# -------------------
#
# All protocol logic lives in the sans-IO ``SecretConnection`` (secret_connection.py). This
# class only moves bytes: whatever the machine wants sent goes to ``transport_stream``, and
# whatever arrives is fed back to it. The same split as trio's SSLStream over ssl.SSLObject.
#
# The handshake. Each side must write its ephemeral key *before* it reads the peer's, and
# then write its AuthSigMessage while the peer writes its own. Over a transport without
# buffering (a lockstep pipe, or a full socket buffer) two sides that both "send, then
# receive" would wait for each other forever, so each of the two rounds runs the send in a
# child task concurrently with the receive loop (CometBFT does the same with goroutines).
# Errors inside those tasks are caught there and re-raised after the nursery closes, so
# callers see a plain exception rather than an ExceptionGroup.
#
# The handshake runs once: explicitly via ``do_handshake()`` or implicitly by the first
# ``send_all``/``receive_some``. A second task arriving meanwhile waits for it to finish.
# It takes no timeout: the caller bounds it with ``trio.fail_after``. If it is cancelled
# half-way, nobody knows how much the peer saw, so the stream is marked broken.
#
# Afterwards ``send_all`` seals into frames and writes them; ``receive_some`` returns
# buffered plaintext if there is any, else reads more from the transport. A cancelled
# receive loses nothing (trio's receive_some guarantee); a cancelled or failed send may
# have written half a frame or advanced the nonce, so the stream is broken from then on.
#
# Errors: anything the state machine refuses (bad handshake, failed frame authentication,
# a close mid-frame) marks the stream broken and raises ``trio.BrokenResourceError`` with
# the same message, chained ``from`` the HandshakeError/ProtocolError. Transport errors pass
# through unchanged. Two tasks sending (or receiving) at once get ``trio.BusyResourceError``.
# Secret Connection has no authenticated close, so EOF at a frame boundary reads as b"".

from __future__ import annotations

import enum
import operator
from collections.abc import Callable
from types import TracebackType

import trio
from nacl.signing import SigningKey

from kms.errors import KmsError
from kms.transport.secret_connection import SecretConnection

_RECEIVE_SIZE = 64 * 1024


class _Exclusive:
    """A context manager that refuses a second concurrent user with BusyResourceError."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._held = False


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


class SecretStream(trio.abc.Stream):
    """Secret Connection over ``transport_stream``; see the theory of operation above."""

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        identity: SigningKey,
        *,
        expected_peer_id: str | None = None,
        ephemeral_private: bytes | None = None,
    ) -> None:
        """Wrap ``transport_stream``; no I/O happens until the handshake runs."""
        self.transport_stream = transport_stream
        self._conn = SecretConnection(
            identity, ephemeral_private=ephemeral_private, expected_peer_id=expected_peer_id
        )
        self._state = _State.OK
        self._handshake_started = False
        self._handshake_finished = trio.Event()
        self._send_guard = _Exclusive("another task is already sending on this SecretStream")
        self._receive_guard = _Exclusive("another task is already receiving on this SecretStream")

    @property
    def local_id(self) -> str:
        """This side's node ID (what the node sees as our peer ID)."""
        return self._conn.local_id

    @property
    def peer_public_key(self) -> bytes:
        """The peer's verified Ed25519 identity key; RuntimeError before the handshake."""
        return self._conn.peer_public_key

    @property
    def peer_id(self) -> str:
        """The peer's verified node ID; RuntimeError before the handshake."""
        return self._conn.peer_id

    @property
    def handshake_complete(self) -> bool:
        """True once the peer's identity has been verified."""
        return self._conn.handshake_complete

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this SecretStream was closed")
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("this SecretStream is broken by an earlier error")

    def _mark_broken(self) -> None:
        if self._state is _State.OK:
            self._state = _State.BROKEN

    def _broken_by(self, exc: KmsError) -> trio.BrokenResourceError:
        self._mark_broken()
        return trio.BrokenResourceError(str(exc))

    async def do_handshake(self) -> None:
        """Run the handshake (once); later calls wait for it or return at once.

        Raises trio.BrokenResourceError (chained from HandshakeError) when the peer is
        refused. Takes no timeout: wrap it in ``trio.fail_after``.
        """
        self._check_open()
        if self._handshake_started:
            await self._handshake_finished.wait()
            self._check_open()
            return
        self._handshake_started = True
        try:
            await self._exchange(lambda: self._conn.keys_established)
            await self._exchange(lambda: self._conn.handshake_complete)
        except KmsError as exc:
            raise self._broken_by(exc) from exc
        except BaseException:
            self._mark_broken()
            raise
        finally:
            self._handshake_finished.set()

    async def _exchange(self, done: Callable[[], bool]) -> None:
        """Send what the machine has queued while receiving until ``done()``."""
        outgoing = self._conn.data_to_send()
        failures: list[Exception] = []

        async def send_outgoing(cancel_scope: trio.CancelScope) -> None:
            try:
                await self.transport_stream.send_all(outgoing)
            except Exception as exc:
                failures.append(exc)
                cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            if outgoing:
                nursery.start_soon(send_outgoing, nursery.cancel_scope)
            try:
                while not done():
                    await self._pull()
            except Exception as exc:
                failures.append(exc)
                nursery.cancel_scope.cancel()
        if failures:
            raise failures[0]

    async def _pull(self) -> None:
        """Read once from the transport and feed the machine (EOF included)."""
        data = await self.transport_stream.receive_some(_RECEIVE_SIZE)
        if data:
            self._conn.receive_data(data)
        else:
            self._conn.receive_eof()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Seal ``data`` into frames and write them (running the handshake first if needed)."""
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_open()
            if not self._conn.handshake_complete:
                await self.do_handshake()
            try:
                self._conn.send(data)
                sealed = self._conn.data_to_send()
            except KmsError as exc:
                raise self._broken_by(exc) from exc
            if not sealed:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            try:
                await self.transport_stream.send_all(sealed)
            except BaseException:
                self._mark_broken()
                raise

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the transport could take more data (returns at once mid-handshake)."""
        with self._send_guard:
            self._check_open()
            if not self._conn.handshake_complete:
                await trio.lowlevel.checkpoint()
                return
            await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return decrypted bytes (at most ``max_bytes``), or b"" once the peer has closed."""
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        with self._receive_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_open()
            if not self._conn.handshake_complete:
                await self.do_handshake()
            waited = False
            try:
                while True:
                    chunk = self._conn.next_plaintext(max_bytes)
                    if chunk or self._conn.peer_closed:
                        break
                    await self._pull()
                    waited = True
            except KmsError as exc:
                raise self._broken_by(exc) from exc
            except trio.BrokenResourceError:
                self._mark_broken()
                raise
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return chunk

    async def aclose(self) -> None:
        """Close the transport; wakes any task blocked in this stream. Idempotent."""
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        self._state = _State.CLOSED
        self._handshake_finished.set()
        await self.transport_stream.aclose()


async def secret_handshake(
    transport: trio.abc.Stream,
    identity: SigningKey,
    expected_peer_id: str | None = None,
) -> SecretStream:
    """Wrap ``transport`` and complete the handshake; close it if the handshake fails.

    No timeout here: the session wraps this call in ``trio.fail_after``.
    """
    stream = SecretStream(transport, identity, expected_peer_id=expected_peer_id)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream
