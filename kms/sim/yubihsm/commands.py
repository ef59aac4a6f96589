"""In-session command dispatch, and the session/device management commands."""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import object_commands as objects
from . import wrap_commands as wrap
from .audit import AUDIT_OFF, DRAIN_COMMANDS
from .constants import MAX_OBJECTS, PAGE_SIZE, TOTAL_PAGES, Cap, Cmd, DeviceError, Err
from .sessions import Session
from .state import Call, DeviceState, unpack_exact, unpack_head

U8 = struct.Struct(">B")
U16 = struct.Struct(">H")
OPTION_HEAD = struct.Struct(">BH")
#: Largest GET_PSEUDO_RANDOM answer that still fits one 2048-byte reply frame.
MAX_RANDOM = 2028


def echo(call: Call) -> bytes:
    """ECHO: the payload, unchanged."""
    return call.payload


def close_session(call: Call) -> bytes:
    """CLOSE_SESSION: the reply is sent (encrypted) before the slot is freed."""
    unpack_exact(struct.Struct(""), call.payload)
    sessions, sid = call.state.sessions, call.session.sid
    call.after = lambda: sessions.close(sid)
    return b""


def reset_device(call: Call) -> bytes:
    """RESET_DEVICE: reply, then erase everything and restore the factory auth key."""
    call.require(Cap.RESET_DEVICE)
    unpack_exact(struct.Struct(""), call.payload)
    call.after = call.state.factory_reset
    return b""


def get_storage_info(call: Call) -> bytes:
    """GET_STORAGE_INFO: total/free records, total/free pages, page size."""
    store = call.state.store
    free_records = MAX_OBJECTS - len(store.objects)
    free_pages = TOTAL_PAGES - store.used_pages()
    return struct.pack(">HHHHH", MAX_OBJECTS, free_records, TOTAL_PAGES, free_pages, PAGE_SIZE)


def get_pseudo_random(call: Call) -> bytes:
    """GET_PSEUDO_RANDOM: ``length`` bytes from the device RNG."""
    call.require(Cap.GET_PSEUDO_RANDOM)
    (length,) = unpack_exact(U16, call.payload)
    if length > MAX_RANDOM:
        raise DeviceError(Err.INVALID_DATA)
    return call.state.random_bytes(length)


def blink_device(call: Call) -> bytes:
    """BLINK_DEVICE: blink the LED for ``seconds`` (recorded in ``DeviceState.blink_until``)."""
    (seconds,) = unpack_exact(U8, call.payload)
    call.state.blink_until = call.state.clock() + seconds
    return b""


def get_log_entries(call: Call) -> bytes:
    """GET_LOG_ENTRIES: the audit log."""
    call.require(Cap.GET_LOG_ENTRIES)
    unpack_exact(struct.Struct(""), call.payload)
    return call.state.log.dump()


def set_log_index(call: Call) -> bytes:
    """SET_LOG_INDEX: release log entries up to ``index`` (for forced audit)."""
    call.require(Cap.GET_LOG_ENTRIES)
    (index,) = unpack_exact(U16, call.payload)
    call.state.log.release(index)
    return b""


def set_option(call: Call) -> bytes:
    """SET_OPTION: option u8, length u16, value."""
    call.require(Cap.SET_OPTION)
    (option, length), value = unpack_head(OPTION_HEAD, call.payload)
    if length != len(value):
        raise DeviceError(Err.WRONG_LENGTH)
    call.state.options.set(option, value)
    call.state.dirty = True
    return b""


def get_option(call: Call) -> bytes:
    """GET_OPTION: the option's value bytes."""
    call.require(Cap.GET_OPTION)
    (option,) = unpack_exact(U8, call.payload)
    return call.state.options.get(option)


Handler = Callable[[Call], bytes]

HANDLERS: dict[int, Handler] = {
    Cmd.ECHO: echo,
    Cmd.RESET_DEVICE: reset_device,
    Cmd.CLOSE_SESSION: close_session,
    Cmd.GET_STORAGE_INFO: get_storage_info,
    Cmd.PUT_OPAQUE: objects.put_opaque,
    Cmd.GET_OPAQUE: objects.get_opaque,
    Cmd.PUT_AUTHENTICATION_KEY: objects.put_authentication_key,
    Cmd.PUT_ASYMMETRIC_KEY: objects.put_asymmetric_key,
    Cmd.GENERATE_ASYMMETRIC_KEY: objects.generate_asymmetric_key,
    Cmd.LIST_OBJECTS: objects.list_objects,
    Cmd.EXPORT_WRAPPED: wrap.export_wrapped,
    Cmd.IMPORT_WRAPPED: wrap.import_wrapped,
    Cmd.PUT_WRAP_KEY: wrap.put_wrap_key,
    Cmd.GET_LOG_ENTRIES: get_log_entries,
    Cmd.GET_OBJECT_INFO: objects.get_object_info,
    Cmd.SET_OPTION: set_option,
    Cmd.GET_OPTION: get_option,
    Cmd.GET_PSEUDO_RANDOM: get_pseudo_random,
    Cmd.GET_PUBLIC_KEY: objects.get_public_key,
    Cmd.SIGN_ECDSA: objects.sign_ecdsa,
    Cmd.DELETE_OBJECT: objects.delete_object,
    Cmd.GENERATE_WRAP_KEY: wrap.generate_wrap_key,
    Cmd.SET_LOG_INDEX: set_log_index,
    Cmd.SIGN_EDDSA: objects.sign_eddsa,
    Cmd.BLINK_DEVICE: blink_device,
    Cmd.CHANGE_AUTHENTICATION_KEY: objects.change_authentication_key,
}


def error_frame(code: Err) -> bytes:
    """The device's error reply ``7f 00 01 <code>``."""
    return bytes([Cmd.ERROR, 0, 1, code])


def execute(state: DeviceState, session: Session, inner: bytes) -> tuple[bytes, Call]:
    """Run one decrypted inner frame and audit it; returns the inner reply and its Call.

    The caller encrypts the reply, then runs ``call.after`` (set only on success).
    """
    command, length = (inner[0], int.from_bytes(inner[1:3], "big")) if len(inner) >= 3 else (0, 0)
    payload = inner[3:]
    call = Call(state, session, payload, command)
    try:
        if len(inner) < 3 or length != len(payload):
            raise DeviceError(Err.WRONG_LENGTH)
        handler = HANDLERS.get(command)
        if handler is None:
            raise DeviceError(Err.INVALID_COMMAND)
        forced = state.options.force_audit != AUDIT_OFF and state.options.audited(command)
        if forced and state.log.is_full() and command not in DRAIN_COMMANDS:
            raise DeviceError(Err.LOG_FULL)
        body = handler(call)
        reply = struct.pack(">BH", command | 0x80, len(body)) + body
    except DeviceError as exc:
        reply = error_frame(exc.code)
        call.after = None
    forced_full = state.options.force_audit != AUDIT_OFF and state.log.is_full()
    if state.options.audited(command) and not forced_full:  # forced audit never overwrites
        state.log.append(
            command,
            length,
            session_key=call.key.object_id,
            target_key=call.target,
            second_key=call.second,
            result=reply[0],
            tick=state.tick(),
        )
    return reply, call
