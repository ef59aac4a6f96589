"""PKCS#11 failures: their CKR_ names, and what each means for the provider.

python-pkcs11 raises one exception class per return value, without a message. This module
names them as the standard does (``CKR_SESSION_HANDLE_INVALID``), for log lines and errors
operators can search for, and sorts them into what the provider does next:

- **session errors**: the session (or the login it carried) is gone; open a new session,
  log in again and retry once;
- **token errors**: the token, its slot or the objects found earlier are gone. SoftHSM
  reports a token directory that vanished as ``CKR_OBJECT_HANDLE_INVALID`` and then
  ``CKR_GENERAL_ERROR``, and sees it again only after the module is finalised and
  initialised anew, so these lead to that, then a new session and login;
- **PIN errors**: the token refused the PIN. Never retried: each attempt counts towards
  locking the token;
- anything else is the token refusing this one operation (not an outage).
"""

from __future__ import annotations

import re

import pkcs11.exceptions as ckr

from kms.errors import SignerError

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")

#: Classes whose CKR_ name is not their class name in upper snake case.
_NAMES: dict[type[BaseException], str] = {
    ckr.AnotherUserAlreadyLoggedIn: "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    ckr.FunctionCancelled: "CKR_FUNCTION_CANCELED",
    ckr.TokenNotRecognised: "CKR_TOKEN_NOT_RECOGNIZED",
    ckr.NoSuchToken: "no such token",
    ckr.NoSuchKey: "no such key",
    ckr.MultipleObjectsReturned: "several objects match",
    ckr.MultipleTokensReturned: "several tokens match",
}

SESSION_ERRORS: tuple[type[BaseException], ...] = (
    ckr.SessionHandleInvalid,
    ckr.SessionClosed,
    ckr.UserNotLoggedIn,
)
TOKEN_ERRORS: tuple[type[BaseException], ...] = (
    ckr.DeviceRemoved,
    ckr.TokenNotPresent,
    ckr.TokenNotRecognised,
    ckr.DeviceError,
    ckr.ObjectHandleInvalid,
    ckr.KeyHandleInvalid,
    ckr.GeneralError,
    ckr.NoSuchToken,
    ckr.SlotIDInvalid,
)
PIN_ERRORS: tuple[type[BaseException], ...] = (
    ckr.PinIncorrect,
    ckr.PinLocked,
    ckr.PinExpired,
    ckr.PinInvalid,
    ckr.PinLenRange,
)


def ckr_name(exc: BaseException) -> str:
    """``CKR_...`` for a python-pkcs11 error (its message, if it carries one, appended)."""
    kind = type(exc)
    name = _NAMES.get(kind)
    if name is None:
        if not isinstance(exc, ckr.PKCS11Error) or kind is ckr.PKCS11Error:
            name = kind.__name__
        else:
            name = "CKR_" + _CAMEL.sub("_", kind.__name__).upper()
    detail = str(exc)
    return f"{name} ({detail})" if detail and name != detail else name


def is_session_error(exc: BaseException) -> bool:
    """The session or its login is gone: a new session can fix it."""
    return isinstance(exc, SESSION_ERRORS)


def is_token_error(exc: BaseException) -> bool:
    """The token or the objects found on it are gone: the module must start over.

    So is a module finalised behind the provider's back (python-pkcs11 reports
    CKR_CRYPTOKI_NOT_INITIALIZED as a plain PKCS11Error saying "not initialized").
    """
    if type(exc) is ckr.PKCS11Error and "not initialized" in str(exc):
        return True
    return isinstance(exc, TOKEN_ERRORS)


def is_pin_error(exc: BaseException) -> bool:
    """The token refused the PIN (never to be retried automatically)."""
    return isinstance(exc, PIN_ERRORS)


class Pkcs11Unavailable(SignerError):
    """The token cannot be used right now (gone, not answering, no session): worth retrying."""


class Pkcs11CommandError(SignerError):
    """The token answered but refused the operation."""


class Pkcs11PinRejected(SignerError):
    """The token refused the PIN; nothing retries it (the token would lock)."""


class Pkcs11Timeout(SignerError):
    """The module did not return within the request's deadline."""
