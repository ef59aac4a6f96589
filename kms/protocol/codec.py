"""The privval request/response codec: ``Message`` bytes <-> typed messages, per version.

The signer decodes requests and encodes responses; the node side (the simulated node,
tests) encodes requests and decodes responses. Bytes never include the uvarint length
prefix (see ``kms.protocol.delimited``). The version, chosen by configuration, decides the
meaning of Message fields 9/10 (v1: SignBytes, Celestia: SignRawBytes, others: none),
whether Vote fields 9/10 exist (v0.38 and later) and the PubKeyResponse layout (v1).

Guarantees:

- Encodings are byte-identical to CometBFT's Go encodings (checked by the golden vectors
  and against the betterproto classes in ``kms.proto``).
- Decoding is permissive like Go: unknown fields of any wire type are ignored.
- Any malformed input raises ``kms.errors.ProtocolError`` and nothing else: a truncated
  field, a known field with the wrong wire type, invalid UTF-8, an out-of-range
  timestamp, a Message with no (or more than one) known oneof member, a member not in
  this version, a request where a response was expected or the reverse, and a sign
  request without its vote or proposal.
- Where Go would merge a repeated nested message, the last occurrence wins instead
  (no CometBFT node ever repeats one).
"""

from kms.protocol.decoding import decode_request, decode_response
from kms.protocol.encoding import encode_request, encode_response

__all__ = ["decode_request", "decode_response", "encode_request", "encode_response"]
