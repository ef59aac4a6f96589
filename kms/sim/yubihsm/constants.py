"""Wire constants of the YubiHSM 2 as the device sees them.

Kept independent of the ``yubihsm`` client library on purpose: the simulator is
tested *against* that library, so sharing its tables would hide mistakes.
"""

from __future__ import annotations

from enum import IntEnum


class Err(IntEnum):
    """Device error codes (the last byte of ``7f 00 01 <code>``)."""

    INVALID_COMMAND = 0x01
    INVALID_DATA = 0x02
    INVALID_SESSION = 0x03
    AUTHENTICATION_FAILED = 0x04
    SESSIONS_FULL = 0x05
    SESSION_FAILED = 0x06
    STORAGE_FAILED = 0x07
    WRONG_LENGTH = 0x08
    INSUFFICIENT_PERMISSIONS = 0x09
    LOG_FULL = 0x0A
    OBJECT_NOT_FOUND = 0x0B
    INVALID_ID = 0x0C
    OBJECT_EXISTS = 0x11
    COMMAND_UNEXECUTED = 0xFF


class DeviceError(Exception):
    """Raised inside the simulator; becomes the reply ``7f 00 01 <code>``."""

    def __init__(self, code: Err) -> None:
        super().__init__(code.name)
        self.code = code


class Cmd(IntEnum):
    """Command bytes the simulator understands (success replies are ``cmd | 0x80``)."""

    ECHO = 0x01
    CREATE_SESSION = 0x03
    AUTHENTICATE_SESSION = 0x04
    SESSION_MESSAGE = 0x05
    DEVICE_INFO = 0x06
    RESET_DEVICE = 0x08
    CLOSE_SESSION = 0x40
    GET_STORAGE_INFO = 0x41
    PUT_OPAQUE = 0x42
    GET_OPAQUE = 0x43
    PUT_AUTHENTICATION_KEY = 0x44
    PUT_ASYMMETRIC_KEY = 0x45
    GENERATE_ASYMMETRIC_KEY = 0x46
    LIST_OBJECTS = 0x48
    EXPORT_WRAPPED = 0x4A
    IMPORT_WRAPPED = 0x4B
    PUT_WRAP_KEY = 0x4C
    GET_LOG_ENTRIES = 0x4D
    GET_OBJECT_INFO = 0x4E
    SET_OPTION = 0x4F
    GET_OPTION = 0x50
    GET_PSEUDO_RANDOM = 0x51
    GET_PUBLIC_KEY = 0x54
    SIGN_ECDSA = 0x56
    DELETE_OBJECT = 0x58
    GENERATE_WRAP_KEY = 0x5B
    SET_LOG_INDEX = 0x67
    SIGN_EDDSA = 0x6A
    BLINK_DEVICE = 0x6B
    CHANGE_AUTHENTICATION_KEY = 0x6C
    ERROR = 0x7F


class ObjType(IntEnum):
    """Object types; an object is keyed by ``(id, type)``."""

    OPAQUE = 0x01
    AUTHENTICATION_KEY = 0x02
    ASYMMETRIC_KEY = 0x03
    WRAP_KEY = 0x04


class Algo(IntEnum):
    """Algorithm identifiers used by the simulated objects."""

    EC_P256 = 12
    EC_P384 = 13
    EC_P521 = 14
    EC_K256 = 15
    EC_BP256 = 16
    EC_BP384 = 17
    EC_BP512 = 18
    AES128_CCM_WRAP = 29
    OPAQUE_DATA = 30
    OPAQUE_X509_CERTIFICATE = 31
    AES128_YUBICO_AUTHENTICATION = 38
    AES192_CCM_WRAP = 41
    AES256_CCM_WRAP = 42
    EC_ED25519 = 46
    EC_P224 = 47


class Cap:
    """Capability bit masks (u64, big-endian on the wire)."""

    GET_OPAQUE = 1 << 0x00
    PUT_OPAQUE = 1 << 0x01
    PUT_AUTHENTICATION_KEY = 1 << 0x02
    PUT_ASYMMETRIC = 1 << 0x03
    GENERATE_ASYMMETRIC_KEY = 1 << 0x04
    SIGN_ECDSA = 1 << 0x07
    SIGN_EDDSA = 1 << 0x08
    EXPORT_WRAPPED = 1 << 0x0C
    IMPORT_WRAPPED = 1 << 0x0D
    PUT_WRAP_KEY = 1 << 0x0E
    GENERATE_WRAP_KEY = 1 << 0x0F
    EXPORTABLE_UNDER_WRAP = 1 << 0x10
    SET_OPTION = 1 << 0x11
    GET_OPTION = 1 << 0x12
    GET_PSEUDO_RANDOM = 1 << 0x13
    GET_LOG_ENTRIES = 1 << 0x18
    RESET_DEVICE = 1 << 0x1C
    DELETE_OPAQUE = 1 << 0x27
    DELETE_AUTHENTICATION_KEY = 1 << 0x28
    DELETE_ASYMMETRIC_KEY = 1 << 0x29
    DELETE_WRAP_KEY = 1 << 0x2A
    CHANGE_AUTHENTICATION_KEY = 1 << 0x2E
    #: Every capability bit a firmware-2.x device defines (bits 0..0x37).
    ALL = (1 << 0x38) - 1


#: Capability needed on the session key to delete an object of each type.
DELETE_CAPABILITY: dict[int, int] = {
    ObjType.OPAQUE: Cap.DELETE_OPAQUE,
    ObjType.AUTHENTICATION_KEY: Cap.DELETE_AUTHENTICATION_KEY,
    ObjType.ASYMMETRIC_KEY: Cap.DELETE_ASYMMETRIC_KEY,
    ObjType.WRAP_KEY: Cap.DELETE_WRAP_KEY,
}

ALL_DOMAINS = 0xFFFF
LABEL_LENGTH = 40
DEFAULT_AUTH_KEY_ID = 1
DEFAULT_PASSWORD = "password"
DEFAULT_AUTH_KEY_LABEL = b"DEFAULT AUTHKEY CHANGE THIS ASAP"
DEFAULT_SERIAL = 12345678
DEFAULT_FIRMWARE = (2, 3, 1)
MAX_SESSIONS = 16
SESSION_IDLE_TIMEOUT = 30.0
#: Largest frame (either direction) a firmware < 2.4 device buffers.
MAX_FRAME = 2048
MAX_OBJECTS = 256
TOTAL_PAGES = 1024
PAGE_SIZE = 126

#: Wrap-key algorithm -> AES key length.
WRAP_KEY_LENGTHS: dict[int, int] = {
    Algo.AES128_CCM_WRAP: 16,
    Algo.AES192_CCM_WRAP: 24,
    Algo.AES256_CCM_WRAP: 32,
}

#: Origin flags reported in ObjectInfo.
ORIGIN_GENERATED = 0x01
ORIGIN_IMPORTED = 0x02
ORIGIN_IMPORTED_WRAPPED = 0x10
