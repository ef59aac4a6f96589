"""Protobuf schemas of the privval protocol and the betterproto classes generated from them.

The ``.proto`` files here were written for this project from the field numbers in the
specs; ``gen/`` holds betterproto 2 code generated from them (committed, never edited).
Regenerate it after changing a ``.proto`` file, from the repository root, with the
``proto`` extra installed::

    python -m kms.proto.regenerate

Packages (importable as ``kms.proto.gen.<package>``):

- ``tendermint.crypto``: PublicKey (oneof ed25519=1, secp256k1=2, bls12381=3, mldsa65=4,
  secp256k1eth=5).
- ``tendermint.types``: SignedMsgType, PartSetHeader, BlockId, Vote, Proposal and the
  Canonical* messages that are signed.
- ``tendermint.privval``: the v0.34 - v0.40 Message oneof (fields 1-8).
- ``cometbft.privval.v1``: the v1.0 Message (v1 PubKeyResponse layout,
  skip_extension_signing, SignBytesRequest/Response as fields 9/10).
- ``celestia.privval``: the v0.38 wire with SignRawBytesRequest/SignedRawBytesResponse
  as fields 9/10 (celestia-core names this package ``tendermint.privval``).
- ``tendermint.p2p``: AuthSigMessage for the Secret Connection handshake; its first
  message is ``betterproto.lib.google.protobuf.BytesValue``.

These classes are the independent oracle used by tests and the simulated node; the
signing hot path uses the hand-written codec in ``kms.protocol`` instead (betterproto
is about ten times too slow for it). Two betterproto behaviours differ from Go and
matter when building messages with it:

- Timestamps become ``datetime`` objects, so nanoseconds are cut to microseconds.
- A nested message, Timestamp included, that equals its default is written only if
  it was built with explicit field values or parsed from the wire. Go always writes
  the non-nullable ones (block_id, part_set_header, timestamp, the response's
  vote/proposal/pub_key). A 1970-01-01T00:00:00Z timestamp is never written by
  betterproto; Go writes it as ``2a 00``.
"""
