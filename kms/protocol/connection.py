"""One end of a privval connection, sans-IO: bytes in, typed messages out, and back.

Shaped like h11's ``Connection``: the I/O layer hands whatever arrived to
:meth:`PrivvalConnection.receive_data` (``b""`` when the peer closed), then calls
:meth:`~PrivvalConnection.next_event` until it returns :data:`NEED_DATA`; what it sends
comes from :meth:`~PrivvalConnection.send`. The role decides the direction: the signer (the
KMS) reads requests and writes responses, the node the reverse. Both the KMS's session and
the simulated node drive this same object.

Any malformed input raises :class:`kms.errors.ProtocolError` (the connection is then
broken: every later call raises it again), and nothing else.
"""

from __future__ import annotations

import enum
from typing import Literal, cast

from kms.errors import ProtocolError
from kms.protocol.codec import decode_request, decode_response, encode_request, encode_response
from kms.protocol.delimited import FrameDecoder, frame
from kms.protocol.messages import Request, Response
from kms.protocol.version import ProtocolVersion

__all__ = ["CLOSED", "NEED_DATA", "Event", "PrivvalConnection", "Role"]

Role = Literal["signer", "node"]


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


#: :meth:`PrivvalConnection.next_event`: no complete message yet; receive more bytes.
NEED_DATA = _Sentinel.NEED_DATA
#: :meth:`PrivvalConnection.next_event`: the peer closed the connection between messages.
CLOSED = _Sentinel.CLOSED

Event = Request | Response | Literal[_Sentinel.NEED_DATA, _Sentinel.CLOSED]


class PrivvalConnection:
    """The privval protocol state of one connection, for one role (see the module docs)."""

    def __init__(self, role: Role, version: ProtocolVersion) -> None:
        if role not in ("signer", "node"):
            raise ValueError(f"role must be 'signer' or 'node', not {role!r}")
        self.role: Role = role
        self.version = version
        self._decoder = FrameDecoder()
        self._peer_closed = False

    def receive_data(self, data: bytes) -> None:
        """Hand over bytes read from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._peer_closed = True
            return
        if self._peer_closed:
            raise ProtocolError("data received after the peer closed the connection")
        self._decoder.feed(data)

    def next_payload(self) -> bytes | Literal[_Sentinel.NEED_DATA, _Sentinel.CLOSED]:
        """The next complete message's bytes (undecoded), :data:`NEED_DATA` or :data:`CLOSED`.

        A peer that closed in the middle of a message is a ProtocolError.
        """
        payload = self._decoder.next_message()
        if payload is not None:
            return payload
        if not self._peer_closed:
            return NEED_DATA
        if self._decoder.buffered:
            raise ProtocolError(
                f"connection closed in the middle of a message ({self._decoder.buffered} "
                "bytes of it received)"
            )
        return CLOSED

    def next_event(self) -> Event:
        """The next request (signer) or response (node), :data:`NEED_DATA` or :data:`CLOSED`."""
        payload = self.next_payload()
        if isinstance(payload, _Sentinel):
            return payload
        if self.role == "signer":
            return decode_request(payload, self.version)
        return decode_response(payload, self.version)

    def send(self, message: Request | Response) -> bytes:
        """The bytes carrying ``message``: a response (signer) or a request (node)."""
        if self.role == "signer":
            return frame(encode_response(cast(Response, message), self.version))
        return frame(encode_request(cast(Request, message), self.version))

    def send_payload(self, payload: bytes) -> bytes:
        """The bytes that carry an already encoded message."""
        return frame(payload)
