"""`tmkms yubihsm setup`: erase a YubiHSM 2 and provision it from a 24-word mnemonic.

The layout is tmkms's, so either tool can restore a device from the other's mnemonic:

====================  =====  =================================================  ============
object                ID     capabilities (delegated)                           domains
====================  =====  =================================================  ============
auth key "admin"      1      all (all); password = the mnemonic phrase          all
auth key "operator"   2      generate/put asymmetric and HMAC keys, export and   all
                             import wrapped, get opaque/option/log, attest (all)
auth key "auditor"    3      get log entries, get/set option, get opaque (none)  all
auth key "validator"  4      sign ECDSA/EdDSA, attest, get log entries (none)    1
wrap key "primary"    1      export/import wrapped, wrap/unwrap data (all)      all
====================  =====  =================================================  ============

The steps: reset the device (authenticating with the configured admin credentials), wait
for it to come back with the factory key (1, "password"), install a random temporary
authentication key in slot 0xfffe, delete the factory key, create the roles and the wrap key,
store a JSON provisioning report as opaque object 0xfffe, then delete the temporary key.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

import attrs
from yubihsm.core import AuthSession
from yubihsm.defs import ALGORITHM, CAPABILITY, OBJECT
from yubihsm.objects import AuthenticationKey, Opaque, WrapKey

from kms import __version__
from kms.errors import SignerError
from providers.yubihsm import mnemonic
from providers.yubihsm.admin import timestamp
from providers.yubihsm.connection import HsmConnection, HsmUnavailable
from providers.yubihsm.transport import BackendFactory

log = logging.getLogger("kms.commands.yubihsm.setup")

ALL_DOMAINS = 0xFFFF
FACTORY_AUTH_KEY_ID = 1
FACTORY_PASSWORD = "password"
SETUP_KEY_ID = 0xFFFE
REPORT_OBJECT_ID = 0xFFFE
WRAP_KEY_ID = 1
RESET_TIMEOUT = 10.0

OPERATOR_CAPABILITIES = (
    CAPABILITY.GENERATE_ASYMMETRIC_KEY
    | CAPABILITY.PUT_ASYMMETRIC
    | CAPABILITY.GENERATE_HMAC_KEY
    | CAPABILITY.PUT_HMAC_KEY
    | CAPABILITY.IMPORT_WRAPPED
    | CAPABILITY.EXPORT_WRAPPED
    | CAPABILITY.GET_OPAQUE
    | CAPABILITY.GET_OPTION
    | CAPABILITY.GET_LOG_ENTRIES
    | CAPABILITY.SIGN_ATTESTATION_CERTIFICATE
)
AUDITOR_CAPABILITIES = (
    CAPABILITY.GET_LOG_ENTRIES
    | CAPABILITY.GET_OPTION
    | CAPABILITY.SET_OPTION
    | CAPABILITY.GET_OPAQUE
)
VALIDATOR_CAPABILITIES = (
    CAPABILITY.SIGN_ECDSA
    | CAPABILITY.SIGN_EDDSA
    | CAPABILITY.SIGN_ATTESTATION_CERTIFICATE
    | CAPABILITY.GET_LOG_ENTRIES
)
WRAP_KEY_CAPABILITIES = (
    CAPABILITY.EXPORT_WRAPPED
    | CAPABILITY.IMPORT_WRAPPED
    | CAPABILITY.WRAP_DATA
    | CAPABILITY.UNWRAP_DATA
)


@attrs.frozen(repr=False)
class Role:
    """An authentication key to create: ID, role name, password and permissions."""

    key_id: int
    name: str
    password: str
    capabilities: int
    delegated: int
    domains: int

    def __repr__(self) -> str:
        return f"Role(key_id={self.key_id}, name={self.name!r})"


@attrs.frozen(repr=False)
class SetupPlan:
    """Everything `setup` derives from one mnemonic (see :mod:`providers.yubihsm.mnemonic`)."""

    phrase: str
    roles: tuple[Role, ...]
    wrap_key: bytes

    @classmethod
    def from_entropy(cls, entropy: bytes) -> SetupPlan:
        """Derive the admin phrase, the role passwords and wrap key 1."""
        phrase = mnemonic.phrase_from_entropy(entropy)
        password = {name: mnemonic.role_password(entropy, name) for name in mnemonic.ROLES}
        all_caps = int(CAPABILITY.ALL)
        roles = (
            Role(1, "admin", phrase, all_caps, all_caps, ALL_DOMAINS),
            Role(2, "operator", password["operator"], OPERATOR_CAPABILITIES, all_caps, ALL_DOMAINS),
            Role(3, "auditor", password["auditor"], AUDITOR_CAPABILITIES, 0, ALL_DOMAINS),
            Role(4, "validator", password["validator"], VALIDATOR_CAPABILITIES, 0, 0x0001),
        )
        return cls(phrase, roles, mnemonic.wrap_key_secret(entropy, WRAP_KEY_ID))

    @classmethod
    def from_phrase(cls, phrase: str) -> SetupPlan:
        """Restore: the plan of an existing phrase (MnemonicError if it is invalid)."""
        return cls.from_entropy(mnemonic.entropy_from_phrase(phrase))

    def role(self, name: str) -> Role:
        """The role called ``name``."""
        return next(role for role in self.roles if role.name == name)

    def __repr__(self) -> str:
        return "SetupPlan(<secret>)"


def fresh_entropy(connection: HsmConnection) -> bytes:
    """New mnemonic entropy from the HSM's RNG and the OS's."""
    hsm_random = connection.execute(lambda session: bytes(session.get_pseudo_random(32)))
    return mnemonic.new_entropy(hsm_random)


def provision(
    open_backend: BackendFactory,
    admin: HsmConnection,
    plan: SetupPlan,
    *,
    reset_timeout: float = RESET_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, object]:
    """Erase the device behind ``admin`` and install ``plan``; returns the report stored.

    ``open_backend`` reaches the same device again after the reset. SignerError on failure.
    """
    serial = admin.hsm().get_device_info().serial
    log.warning("factory resetting HSM device! all data will be lost!")
    admin.execute(lambda session: session.reset_device())
    admin.forget()
    log.info("waiting for device reset to complete")
    factory = _wait_for_factory_key(open_backend, reset_timeout, sleep)
    try:
        temp_enc, temp_mac = os.urandom(16), os.urandom(16)
        all_caps = CAPABILITY.ALL
        factory.execute(
            lambda session: AuthenticationKey.put(
                session,
                SETUP_KEY_ID,
                "tmkms setup: temporary key",
                ALL_DOMAINS,
                all_caps,
                all_caps,
                temp_enc,
                temp_mac,
            )
        )
    finally:
        factory.close()
    log.info("installed temporary setup authentication key into slot %d", SETUP_KEY_ID)
    setup = HsmConnection(open_backend, SETUP_KEY_ID, keys=(temp_enc, temp_mac))
    try:
        log.warning("deleting default authentication key from slot %d", FACTORY_AUTH_KEY_ID)
        setup.execute(lambda s: AuthenticationKey(s, FACTORY_AUTH_KEY_ID).delete())
        for role in plan.roles:
            label = f"{role.name}:{timestamp()}"
            log.info("installing role: %s", label)
            setup.execute(_put_role(role, label))
        wrap_label = f"primary:{timestamp()}"
        log.info("installing wrap key: %s", wrap_label)
        setup.execute(
            lambda s: WrapKey.put(
                s,
                WRAP_KEY_ID,
                wrap_label,
                ALL_DOMAINS,
                WRAP_KEY_CAPABILITIES,
                ALGORITHM.AES256_CCM_WRAP,
                CAPABILITY.ALL,
                plan.wrap_key,
            )
        )
        report = provisioning_report(serial)
        log.info("storing provisioning report in opaque object 0x%x", REPORT_OBJECT_ID)
        data = json.dumps(report, separators=(",", ":")).encode()
        setup.execute(
            lambda s: Opaque.put(
                s,
                REPORT_OBJECT_ID,
                "tmkms setup report",
                ALL_DOMAINS,
                CAPABILITY.GET_OPAQUE,
                ALGORITHM.OPAQUE_DATA,
                data,
            )
        )
        log.warning("deleting temporary setup authentication key from slot %d", SETUP_KEY_ID)
        setup.execute(lambda s: s.get_object(SETUP_KEY_ID, OBJECT.AUTHENTICATION_KEY).delete())
    finally:
        setup.forget()
    return report


def _put_role(role: Role, label: str) -> Callable[[AuthSession], object]:
    def put(session: AuthSession) -> object:
        return AuthenticationKey.put_derived(
            session,
            role.key_id,
            label,
            role.domains,
            CAPABILITY(role.capabilities),
            CAPABILITY(role.delegated),
            role.password,
        )

    return put


def provisioning_report(serial: int) -> dict[str, object]:
    """Who provisioned which device, when, with what (stored in the HSM as JSON)."""
    try:
        username: str | None = getpass.getuser()
    except (KeyError, OSError):
        username = None
    return {
        "version": 1,
        "uuid": str(uuid.uuid4()),
        "device_serial_number": str(serial),
        "hostname": socket.gethostname() or None,
        "username": username,
        "date": timestamp(),
        "software": f"tmkms-py {__version__}",
    }


def _wait_for_factory_key(
    open_backend: BackendFactory, timeout: float, sleep: Callable[[float], None]
) -> HsmConnection:
    """Reconnect until the reset device accepts the factory credentials."""
    deadline = time.monotonic() + timeout
    while True:
        connection = HsmConnection(open_backend, FACTORY_AUTH_KEY_ID, FACTORY_PASSWORD)
        try:
            connection.session()
        except HsmUnavailable as exc:
            if time.monotonic() >= deadline:
                raise SignerError(
                    f"the YubiHSM did not come back with its factory key after reset: {exc}"
                ) from exc
            sleep(0.2)
            continue
        return connection
