"""Which privval protocol a validator speaks; chosen by config, never guessed."""

from __future__ import annotations

from enum import StrEnum


class ProtocolVersion(StrEnum):
    """The `protocol_version` values of a `[[validator]]` in tmkms.toml."""

    V0_34 = "v0.34"
    V0_37 = "v0.37"
    V0_38 = "v0.38"
    V1 = "v1"
    # CometBFT v0.38 wire, with Celestia's SignRawBytes meaning of Message fields 9/10.
    CELESTIA = "celestia"

    @classmethod
    def parse(cls, text: str) -> ProtocolVersion:
        """Return the version named by ``text``; ValueError lists the accepted names."""
        for version in cls:
            if version.value == text:
                return version
        allowed = ", ".join(f'"{v.value}"' for v in cls)
        raise ValueError(f"unknown protocol version {text!r} (expected one of {allowed})")

    @property
    def extensions_by_default(self) -> bool:
        """Whether non-nil precommits get an extension signature unless config says otherwise."""
        return self not in (ProtocolVersion.V0_34, ProtocolVersion.V0_37)

    @property
    def has_vote_extensions(self) -> bool:
        """Whether Vote fields 9/10 (extension, extension_signature) exist on the wire."""
        return self.extensions_by_default

    @property
    def uses_v1_pubkey(self) -> bool:
        """Whether PubKeyResponse uses the v1 layout (pub_key_bytes=3, pub_key_type=4)."""
        return self is ProtocolVersion.V1
