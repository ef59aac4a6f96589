"""The privval protocol, sans-IO (never imports trio, never uses betterproto).

- ``varint``: uvarints. ``wire``: protobuf wire primitives and the field scanner.
- ``messages``: the typed messages. ``version``: which protocol a validator speaks.
- ``codec`` (``decoding``, ``encoding``): Message bytes <-> typed messages, per version.
- ``delimited``: uvarint length-delimited messages and the incremental FrameDecoder.
- ``connection``: :class:`PrivvalConnection`, one end of a connection (signer or node):
  ``receive_data()`` / ``next_event()`` / ``send()``, as h11's Connection.
- ``signbytes``: canonical sign bytes, the Celestia raw-bytes envelope, ``step_of``.
"""
