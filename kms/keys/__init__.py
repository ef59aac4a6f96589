"""Key files and key display, compatible with tmkms.

- :mod:`kms.keys.files`: one-line base64 secret files, 0600/0700 creation, permission checks;
- :mod:`kms.keys.ed25519` / :mod:`kms.keys.secp256k1`: the secret key layouts tmkms reads;
- :mod:`kms.keys.privval_json`: CometBFT's ``priv_validator_key.json``;
- :mod:`kms.keys.display` / :mod:`kms.keys.bech32`: ``key_format`` rendering and node IDs.

Nothing here logs or formats secret bytes; errors name the file and the problem only.
"""

from __future__ import annotations

from kms.keys.bech32 import bech32_decode, bech32_encode
from kms.keys.display import (
    amino_encode_public_key,
    format_public_key,
    node_id,
    validator_address,
)
from kms.keys.ed25519 import (
    ExpandedSigningKey,
    ed25519_key_from_bytes,
    generate_ed25519_seed,
    load_ed25519_key,
)
from kms.keys.files import (
    read_base64_secret,
    readable_by_others,
    warn_if_readable_by_others,
    write_base64_secret,
    write_secret_file,
)
from kms.keys.privval_json import (
    PrivValidatorKey,
    format_priv_validator_key_json,
    parse_priv_validator_key,
    public_key_json,
    read_priv_validator_key,
    read_priv_validator_key_json,
)
from kms.keys.secp256k1 import (
    check_secp256k1_scalar,
    generate_secp256k1_scalar,
    load_secp256k1_key,
    secp256k1_public_key,
)

__all__ = [
    "ExpandedSigningKey",
    "PrivValidatorKey",
    "amino_encode_public_key",
    "bech32_decode",
    "bech32_encode",
    "check_secp256k1_scalar",
    "ed25519_key_from_bytes",
    "format_priv_validator_key_json",
    "format_public_key",
    "generate_ed25519_seed",
    "generate_secp256k1_scalar",
    "load_ed25519_key",
    "load_secp256k1_key",
    "node_id",
    "parse_priv_validator_key",
    "public_key_json",
    "read_base64_secret",
    "read_priv_validator_key",
    "read_priv_validator_key_json",
    "readable_by_others",
    "secp256k1_public_key",
    "validator_address",
    "warn_if_readable_by_others",
    "write_base64_secret",
    "write_secret_file",
]
