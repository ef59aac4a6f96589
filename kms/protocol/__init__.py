"""The privval protocol, sans-IO (never imports trio, never uses betterproto).

- ``varint``: uvarints. ``wire``: protobuf wire primitives and the field scanner.
- ``messages``: the typed messages. ``version``: which protocol a validator speaks.
- ``codec`` (``decoding``, ``encoding``): Message bytes <-> typed messages, per version.
- ``framing``: uvarint length-prefixed frames and the incremental FrameDecoder.
- ``signbytes``: canonical sign bytes, the Celestia raw-bytes envelope, ``step_of``.
"""
