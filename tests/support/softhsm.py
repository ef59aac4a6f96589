"""A real SoftHSM2 token per test: a private token directory, its softhsm2.conf, teardown.

SoftHSM reads ``$SOFTHSM2_CONF`` when the module is initialised, so each test points it at
its own configuration and token directory (under the test's ``tmp_path``); the module loaded
in the test process is unloaded before and after, so the next initialisation reads the new
configuration. Tokens are made with Debian's ``softhsm2-util --init-token``.

The helpers talk to the token with python-pkcs11 directly (not through the provider), under
the process-wide PKCS#11 lock: they are the independent view the tests compare the product
against. Under ``CI=true`` a missing SoftHSM2 fails the tests; elsewhere they are skipped,
saying why.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

if TYPE_CHECKING:
    from kms.config.model import Pkcs11Config
    from providers import OpenedProvider

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
LOCK_TIMEOUT = 15.0
SO_PIN = "so-pin-5678"
ED25519_OID = bytes.fromhex("06032b6570")
P256_OID = bytes.fromhex("06082a8648ce3d030107")
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190


def _missing(reason: str) -> None:
    reason += " (install Debian's softhsm2, or set SOFTHSM2_MODULE)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires it")
    pytest.skip(reason)


def softhsm_module() -> Path:
    """The SoftHSM2 PKCS#11 module; skips (fails under ``CI=true``) when there is none."""
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        _missing("python-pkcs11 is not installed (the pkcs11 extra)")
    env = os.environ.get("SOFTHSM2_MODULE")
    for candidate in ([env] if env else []) + list(MODULE_CANDIDATES):
        if os.path.isfile(candidate):
            return Path(candidate)
    _missing("the SoftHSM2 module libsofthsm2.so was not found")
    raise AssertionError("unreachable")


def softhsm_util() -> str:
    """The ``softhsm2-util`` command; skips (fails under ``CI=true``) when it is missing."""
    path = shutil.which("softhsm2-util")
    if path is None:
        _missing("softhsm2-util was not found")
    assert path is not None
    return path


@attrs.define
class SoftHsm:
    """A private SoftHSM2 installation: its configuration, token directory and tokens."""

    root: Path
    module: Path
    util: str
    label: str = "kms"
    pin: str = attrs.field(factory=lambda: "pin-" + secrets.token_hex(8))
    slots: dict[str, int] = attrs.field(factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def env(self) -> dict[str, str]:
        """The environment a `tmkms` process needs to see these tokens."""
        return {"SOFTHSM2_CONF": str(self.conf)}

    def write_conf(self) -> None:
        self.tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.conf.write_text(
            f"directories.tokendir = {self.tokens}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
        )

    def init_token(self, label: str | None = None, pin: str | None = None) -> int:
        """``softhsm2-util --init-token --free``; returns the new token's slot ID."""
        label = label or self.label
        result = subprocess.run(
            [self.util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN,
             "--pin", pin or self.pin],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        match = re.search(r"reassigned to slot (\d+)", result.stdout)
        assert match, result.stdout
        self.slots[label] = int(match.group(1))
        return self.slots[label]

    @contextmanager
    def session(self, label: str | None = None, *, rw: bool = True) -> Iterator[Any]:
        """A logged-in python-pkcs11 session on a token, under the PKCS#11 lock.

        Closing it logs the whole process out of the token (PKCS#11 logins are per
        process): a provider open meanwhile has to log in again. A module this opens is
        finalised again afterwards.
        """
        import pkcs11

        with locked():
            was_initialized = _initialized(self.module)
            library = pkcs11.lib(os.path.realpath(self.module))
            try:
                session = library.get_token(token_label=label or self.label).open(
                    rw=rw, user_pin=self.pin
                )
                try:
                    yield session
                finally:
                    session.close()
            finally:
                if not was_initialized:  # leave the module as it was found
                    library.finalize()

    def take_away(self) -> Path:
        """Make every token unavailable, as a lost device would be: move the directory away."""
        away = self.root / "tokens.away"
        self.tokens.rename(away)
        return away

    def bring_back(self) -> None:
        """Undo :meth:`take_away`."""
        (self.root / "tokens.away").rename(self.tokens)

    def provider_toml(self, keys: list[str], **extra: str) -> str:
        """A `[[providers.pkcs11]]` section on this token, with `keys` as inline tables."""
        lines = [
            "[[providers.pkcs11]]",
            f'module = "{self.module}"',
            f'token_label = "{self.label}"',
            *(f"{key} = {value}" for key, value in extra.items()),
        ]
        if "pin" not in extra and "pin_file" not in extra:
            lines.append(f'pin = "{self.pin}"')
        lines.append("keys = [" + ", ".join(keys) + "]")
        return "\n".join(lines) + "\n"


@contextmanager
def locked() -> Iterator[None]:
    """Hold the process-wide PKCS#11 lock (fails the test if it cannot be had in time)."""
    from providers.pkcs11 import PKCS11_LOCK

    if not PKCS11_LOCK.acquire(timeout=LOCK_TIMEOUT):
        pytest.fail("the PKCS#11 lock was not released (a module call is stuck)")
    try:
        yield
    finally:
        PKCS11_LOCK.release()


def unload_module(module: Path) -> None:
    """Finalise and unload the module in this process, if it is loaded."""
    import pkcs11

    with locked():
        pkcs11.unload(os.path.realpath(module))


def private_softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsm]:
    """The body of a test module's ``softhsm`` fixture: a private SoftHSM2, one token ``kms``::

    @pytest.fixture
    def softhsm(tmp_path, monkeypatch):
        yield from private_softhsm(tmp_path, monkeypatch)
    """
    module, util = softhsm_module(), softhsm_util()
    hsm = SoftHsm(tmp_path / "softhsm", module, util)
    hsm.write_conf()
    unload_module(module)
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm.conf))
    hsm.init_token()
    try:
        yield hsm
    finally:
        unload_module(module)


def put_ed25519(
    session: Any,
    label: str,
    key_id: bytes,
    seed: bytes | None = None,
    *,
    public_key: bytes | None = None,
    with_public: bool = True,
) -> bytes | None:
    """An Ed25519 key made with python-pkcs11 alone: generated in the token, or ``seed``.

    ``public_key`` puts another key in the public-key object; ``with_public=False`` leaves it
    out. Returns the public key the token holds (None without a public-key object).
    """
    from nacl.signing import SigningKey
    from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

    if seed is None and public_key is None and with_public:
        public, _ = session.generate_keypair(
            KeyType.EC_EDWARDS,
            store=True,
            label=label,
            id=key_id,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.EC_PARAMS: ED25519_OID},
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        point: bytes = public[Attribute.EC_POINT]
        assert point[:2] == b"\x04\x20" and len(point) == 34
        return point[2:]
    seed = seed if seed is not None else bytes(SigningKey.generate())
    common = {
        Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
        Attribute.TOKEN: True,
        Attribute.LABEL: label,
        Attribute.ID: key_id,
        Attribute.EC_PARAMS: ED25519_OID,
    }
    session.create_object(
        {**common, Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.PRIVATE: True,
         Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True,
         Attribute.VALUE: seed}
    )  # fmt: skip
    if not with_public:
        return None
    public_key = public_key or bytes(SigningKey(seed).verify_key)
    session.create_object(
        {**common, Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.VERIFY: True,
         Attribute.EC_POINT: b"\x04\x20" + public_key}
    )  # fmt: skip
    return public_key


def put_p256(session: Any, label: str, key_id: bytes) -> None:
    """A NIST P-256 key pair (the wrong type for a consensus key)."""
    from pkcs11 import Attribute, KeyType

    session.generate_keypair(
        KeyType.EC,
        store=True,
        label=label,
        id=key_id,
        public_template={Attribute.EC_PARAMS: P256_OID},
    )


def private_key_flags(session: Any, label: str) -> dict[str, Any]:
    """What the token says about the private key ``label``: class, type and flags."""
    from pkcs11 import Attribute, ObjectClass

    (key,) = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                       Attribute.LABEL: label}))  # fmt: skip
    return {
        "key_type": key[Attribute.KEY_TYPE],
        "sensitive": key[Attribute.SENSITIVE],
        "extractable": key[Attribute.EXTRACTABLE],
        "always_sensitive": key[Attribute.ALWAYS_SENSITIVE],
        "never_extractable": key[Attribute.NEVER_EXTRACTABLE],
        "private": key[Attribute.PRIVATE],
        "id": key[Attribute.ID],
    }


def public_key_of(session: Any, label: str) -> bytes:
    """The 32-byte key in the public-key object ``label`` (DER-unwrapped)."""
    from pkcs11 import Attribute, ObjectClass

    (key,) = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                       Attribute.LABEL: label}))  # fmt: skip
    point: bytes = key[Attribute.EC_POINT]
    assert point[:2] == b"\x04\x20" and len(point) == 34, point.hex()
    return point[2:]


def raw_call(module: Path, function: str, *args: int) -> int:
    """Call a C_* function of the module directly (ctypes), under the lock; its CK_RV.

    The same module instance as python-pkcs11's (dlopen hands back the loaded library), so
    this reaches the product's sessions: e.g. C_CloseAllSessions(slot) invalidates them.
    """
    import ctypes

    with locked():
        library = ctypes.CDLL(os.path.realpath(module))
        call = getattr(library, function)
        call.restype = ctypes.c_ulong
        return int(call(*(ctypes.c_ulong(arg) for arg in args)))


def module_initialized(module: Path) -> bool:
    """Whether the module is initialised in this process (C_GetInfo answers)."""
    with locked():
        return _initialized(module)


def _initialized(module: Path) -> bool:
    import ctypes

    library = ctypes.CDLL(os.path.realpath(module))
    info = ctypes.create_string_buffer(512)
    library.C_GetInfo.restype = ctypes.c_ulong
    return int(library.C_GetInfo(info)) != CKR_CRYPTOKI_NOT_INITIALIZED


BECH32 = {
    "type": "bech32",
    "account_key_prefix": "cosmospub",
    "consensus_key_prefix": "cosmosvalconspub",
}


class Health:
    """A ProviderHealth that remembers what it was told."""

    def __init__(self) -> None:
        self.reports: list[tuple[bool, str | None]] = []
        self.sources: list[Any] = []

    def set_reachable(self, reachable: bool, reason: str | None = None) -> None:
        self.reports.append((reachable, reason))

    def count_session_reopens_from(self, source: Any) -> None:
        self.sources.append(source)

    @property
    def session_reopens(self) -> int:
        return sum(source() for source in self.sources)


def document(
    hsm: SoftHsm, keys: list[dict[str, Any]], chains: tuple[str, ...] = ("hsm-1",), **section: Any
) -> dict[str, Any]:
    """A parsed tmkms.toml with ``chains`` and one `[[providers.pkcs11]]` on ``hsm``."""
    provider: dict[str, Any] = {"module": str(hsm.module), "token_label": hsm.label}
    if "pin_file" not in section:
        provider["pin"] = hsm.pin
    provider.update(section, keys=keys)
    return {
        "chain": [{"id": chain, "key_format": BECH32} for chain in chains],
        "providers": {"pkcs11": [provider]},
    }


def pkcs11_section(hsm: SoftHsm, keys: list[dict[str, Any]], **extra: Any) -> Pkcs11Config:
    """The `[[providers.pkcs11]]` section on ``hsm``, through the real config parser."""
    from kms.config import config_from_dict

    chains = tuple(sorted({c for key in keys for c in key["chain_ids"]})) or ("hsm-1",)
    config = config_from_dict(document(hsm, keys, chains, **extra), Path("tmkms.toml"), Path.cwd())
    assert config.pkcs11 is not None
    return config.pkcs11


@contextmanager
def opened(
    config: Pkcs11Config, health: Health | None = None, **options: Any
) -> Iterator[OpenedProvider]:
    """``open_pkcs11(config, ...)``, closed afterwards."""
    from providers.pkcs11 import open_pkcs11

    provider = open_pkcs11(config, health or Health(), **options)
    try:
        yield provider
    finally:
        if provider.close is not None:
            provider.close()
