"""`tmkms state show|init|import|set`: read and (carefully) change each chain's double-sign state.

* ``show [-c PATH] [--json]`` prints every configured chain's last signed height/round/step
  and block, and whether a running `tmkms start` holds the file. Reading is safe while the
  KMS runs (the file is replaced atomically), so ``show`` never refuses.
* ``import CHAIN_ID FILE [--format auto|cometbft|tmkms] [--force]`` takes the state from a
  CometBFT ``priv_validator_state.json`` (steps mapped by :mod:`kms.chain.filepv`) or a tmkms
  state file, typically when moving a validator from its node's file signer to the KMS.
* ``set CHAIN_ID HEIGHT`` moves the state to HEIGHT/0/0 with a nil block, only upwards.

``import`` and ``set`` take the chain's state lock (:mod:`kms.lock`) and refuse while a
`tmkms start` holds it; they never lower a state (``import`` only with ``--force``), print
the state before and after, and write it durably (:class:`kms.chain.store.StateFile`).

With ``[etcd]`` (high availability), each chain also has a shared watermark in etcd:

* ``show`` reads every chain's watermark (a linearizable read) and prints it beside the
  local state with the host that wrote it, or ``missing``, or why the value is malformed.
  An etcd that cannot be asked is one line saying so (the local states are still shown).
* ``init [CHAIN_ID ...]`` creates the missing watermarks of the named (default: all)
  chains from this host's local states (height 0 where there is no state file yet), and
  leaves existing ones as they are. `tmkms start` never creates one: a key missing could
  as well have been lost, and a host behind what another signed would then sign that step
  again. Run it once, on a new etcd, on the host with the latest state files. It only
  reads the local states, so it may run while `tmkms start` is up (and refusing: the
  chain starts signing within a second of its key's creation).
* ``import`` and ``set``, after the local write and still holding the state lock, raise the
  watermark to the new local state by check-and-set (:func:`kms.ha.admin.raise_watermark`):
  a concurrent writer is never overwritten, a watermark at or past the state is left as it
  is, and a malformed value is left alone; ``import --force`` replaces either. The outcome
  is printed; a missing watermark is created. If etcd cannot be asked, the local state
  stays written and the command fails (exit 1) saying so: run it again (`tmkms start`
  brings an existing watermark and the local state together on first contact).

Exit codes of ``init``: 4 when a state file or a watermark cannot be read (or is
malformed), else 1 when etcd could not be asked, else 0.

Exit codes of ``show``: 4 when a state file or a watermark cannot be read (or is
malformed), else 1 when etcd could not be asked, else 0. Nothing here ever prints the etcd
password (the client never formats it into a message).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from kms.chain.filepv import parse_cometbft_state
from kms.chain.state import MAX_HEIGHT_VALUE, BlockRef, SignState
from kms.chain.stateformat import parse_state
from kms.chain.store import StateFile, read_state
from kms.commands import add_config_option, add_group
from kms.config import ChainConfig, KmsConfig, config_path_from, load_config
from kms.config.etcd import EtcdSettings
from kms.errors import ConfigError, KmsError, StateError
from kms.lock import lock_state_files, state_lock_holder

if TYPE_CHECKING:
    from kms.commands import Subparsers
    from kms.ha.admin import Raised
    from kms.ha.client import EtcdClient
    from kms.ha.watermark import Stored

_PURPOSE = "stop it before changing the state"
#: Seconds these commands wait for etcd at least (the ``[etcd] timeout`` is for one
#: signature's check-and-set; an operator's command can afford a few seconds).
ETCD_WAIT = 5.0


def add_commands(subparsers: Subparsers) -> None:
    """Register `state show`, `state init`, `state import` and `state set`."""
    group = add_group(subparsers, "state", "show or change the double-sign state of each chain")
    show = group.add_parser("show", help="print every chain's last signed state")
    add_config_option(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(handler=show_states)

    init = group.add_parser(
        "init", help="with [etcd]: create the missing shared watermarks from the local states"
    )
    add_config_option(init)
    init.add_argument("chain_ids", metavar="CHAIN_ID", nargs="*", help="default: every chain")
    init.set_defaults(handler=init_shared)

    load = group.add_parser(
        "import", help="take a chain's state from priv_validator_state.json or a tmkms state file"
    )
    add_config_option(load)
    load.add_argument("chain_id", metavar="CHAIN_ID")
    load.add_argument("file", metavar="FILE", type=Path)
    load.add_argument(
        "--format",
        choices=("auto", "cometbft", "tmkms"),
        default="auto",
        help="what FILE is (default: auto; a tmkms state file has a block_id key)",
    )
    load.add_argument(
        "--force",
        action="store_true",
        help="allow lowering the state, or replacing an unreadable state file",
    )
    load.set_defaults(handler=import_state)

    raise_ = group.add_parser("set", help="raise a chain's state to HEIGHT/0/0 (never lowers)")
    add_config_option(raise_)
    raise_.add_argument("chain_id", metavar="CHAIN_ID")
    raise_.add_argument("height", metavar="HEIGHT", type=_height)
    raise_.set_defaults(handler=set_height)


def _height(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= MAX_HEIGHT_VALUE:
        raise argparse.ArgumentTypeError(f"expected a positive block height, got {text!r}")
    return int(text)


def _chain(config: KmsConfig, chain_id: str) -> ChainConfig:
    try:
        return config.chain(chain_id)
    except KeyError as exc:
        known = ", ".join(c.id for c in config.chains) or "none"
        raise ConfigError(
            f"{config.path}: no [[chain]] with id {chain_id!r} (configured: {known})"
        ) from exc


def read_import_file(path: Path, fmt: str = "auto") -> tuple[SignState, str]:
    """The state in a CometBFT or tmkms state file, and which of the two it was."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if fmt == "auto":
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise StateError(f"{path} is not JSON: {exc}") from exc
        fmt = "tmkms" if isinstance(doc, dict) and "block_id" in doc else "cometbft"
    try:
        if fmt == "tmkms":
            return parse_state(text), fmt
        return parse_cometbft_state(text), fmt
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise StateError(f"{path} is not a tmkms state file: {exc}") from exc
    except StateError as exc:
        raise StateError(f"{path}: {exc}") from exc


def describe(state: SignState | None) -> str:
    """``H/R/S Type, block <hash>`` for humans (the full hash; ``<nil>`` for nil)."""
    if state is None:
        return "none (no state file)"
    block = "<nil>" if state.block.is_nil() else state.block.hash.hex().upper()
    return f"{state} {state.type_name}, block {block}"


def state_json(state: SignState) -> dict[str, Any]:
    """A state as JSON fields (heights as numbers; the block ID as in a tmkms state file)."""
    block: BlockRef = state.block
    return {
        "height": state.height,
        "round": state.round,
        "step": state.step,
        "step_name": state.type_name,
        "block_id": {
            "hash": block.hash.hex().upper(),
            "parts": {"total": block.parts_total, "hash": block.parts_hash.hex().upper()},
        },
    }


def show_states(args: argparse.Namespace) -> int:
    """`tmkms state show`: every chain's state (and watermark); see the module docstring."""
    config = load_config(config_path_from(args.config))
    entries: list[dict[str, Any]] = []
    lines: list[str] = []
    shared: SharedView | None = None
    if config.etcd is not None:
        shared = read_shared(config.etcd, [chain.id for chain in config.chains])
        lines.append(shared.headline())
    for chain in config.chains:
        entry: dict[str, Any] = {"chain_id": chain.id, "state_file": str(chain.state_file)}
        entries.append(entry)
        state: SignState | None = None
        try:
            state = read_state(chain.state_file)
            pid = state_lock_holder(chain.state_file)
        except StateError as exc:
            entry["error"] = str(exc)
            lines.append(f"{chain.id}: error: {exc}")
        else:
            entry["exists"] = state is not None
            entry["locked_by_pid"] = pid
            if state is not None:
                entry.update(state_json(state))
            head = describe(state) if state is not None else "nothing signed yet (no state file)"
            held = "" if pid is None else f" (in use by a running tmkms start, pid {pid or '?'})"
            lines.append(f"{chain.id}: {head}\n    {chain.state_file}{held}")
        if shared is not None:
            entry["shared"] = shared.chain_json(chain.id)
            lines.append(f"    shared: {shared.chain_text(chain.id, state)}")
    if args.json:
        doc: dict[str, Any] = {"chains": entries}
        if shared is not None:
            doc["etcd"] = shared.etcd_json()
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(lines))
    if any("error" in entry for entry in entries):
        return 4
    if shared is not None and shared.malformed():
        return 4
    return 1 if shared is not None and shared.error is not None else 0


@attrs.frozen
class SharedView:
    """What ``show`` learnt from etcd: each chain's stored watermark, or why it did not."""

    settings: EtcdSettings
    stored: dict[str, Stored]
    error: str | None  # etcd could not be asked (the chains without ``stored`` are unknown)

    def key(self, chain_id: str) -> str:
        return f"{self.settings.prefix}{chain_id}"

    def headline(self) -> str:
        if self.error is not None:
            return f"etcd: not reachable: {self.error}"
        return f"etcd: {', '.join(self.settings.endpoints)} (prefix {self.settings.prefix})"

    def malformed(self) -> bool:
        return any(stored.problem is not None for stored in self.stored.values())

    def chain_text(self, chain_id: str, local: SignState | None) -> str:
        key = self.key(chain_id)
        stored = self.stored.get(chain_id)
        if stored is None:
            return f"unknown: etcd not reachable (key {key})"
        if stored.problem is not None:
            return (
                f"malformed: etcd key {key} (revision {stored.mod_revision}) does not hold a "
                f"tmkms watermark: {stored.problem}"
            )
        if stored.watermark is None:
            return (
                f"missing (no etcd key {key}; tmkms start refuses to sign until "
                "`tmkms state init` creates it)"
            )
        mark = stored.watermark
        where = f"etcd key {key}, revision {stored.mod_revision}"
        text = f"{describe(mark.state)}, written by {mark.host} ({where})"
        if local is not None:
            text += _compared(local, mark.state)
        return text

    def chain_json(self, chain_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"key": self.key(chain_id)}
        stored = self.stored.get(chain_id)
        if stored is None:
            doc.update(status="unknown", error=self.error or "etcd not reachable")
        elif stored.problem is not None:
            doc.update(status="malformed", mod_revision=stored.mod_revision, error=stored.problem)
        elif stored.watermark is None:
            doc["status"] = "missing"
        else:
            mark = stored.watermark
            doc.update(status="ok", mod_revision=stored.mod_revision, host=mark.host)
            doc.update(nonce=mark.nonce, **state_json(mark.state))
        return doc

    def etcd_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "endpoints": list(self.settings.endpoints),
            "prefix": self.settings.prefix,
            "reachable": self.error is None,
        }
        if self.error is not None:
            doc["error"] = self.error
        return doc


def _compared(local: SignState, shared: SignState) -> str:
    """How the watermark stands against the local state, for the operator."""
    if shared == local:
        return ", same as the local state"
    if shared.hrs > local.hrs:
        return ", ahead of the local state (tmkms start adopts it)"
    if shared.hrs < local.hrs:
        return ", behind the local state (tmkms start raises it)"
    return ", at the local state's height/round/step with another block"


def read_shared(settings: EtcdSettings, chain_ids: list[str]) -> SharedView:
    """Every chain's watermark, read within :func:`etcd_wait` seconds."""
    import trio

    stored, error = trio.run(_read_shared, settings, chain_ids)
    return SharedView(settings, stored, error)


def etcd_wait(settings: EtcdSettings) -> float:
    """How long a command waits for etcd: ``ETCD_WAIT``, or the ``[etcd] timeout`` if longer."""
    return max(ETCD_WAIT, settings.timeout)


async def _read_shared(
    settings: EtcdSettings, chain_ids: list[str]
) -> tuple[dict[str, Stored], str | None]:
    from kms.ha.admin import read_watermark
    from kms.ha.watermark import watermark_key

    stored: dict[str, Stored] = {}
    try:
        async with _etcd_session(settings) as client:
            for chain_id in chain_ids:
                key = watermark_key(settings.prefix, chain_id)
                stored[chain_id] = await read_watermark(client, key)
    except KmsError as exc:
        return stored, str(exc).removeprefix("etcd: ")
    return stored, None


@asynccontextmanager
async def _etcd_session(settings: EtcdSettings) -> AsyncIterator[EtcdClient]:
    """The client of ``[etcd]``, the block under :func:`etcd_wait`; EtcdError past it.

    A bad password or TLS file is a ConfigError; the client's connections are closed on
    exit (shielded, briefly: closing never waits on a stalled member).
    """
    import trio

    from kms.ha.errors import EtcdCause, EtcdError
    from kms.ha.settings import open_client

    client = open_client(settings)
    wait = etcd_wait(settings)
    try:
        with trio.move_on_after(wait) as scope:
            yield client
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await client.aclose()
    if scope.cancelled_caught:
        endpoints = ", ".join(settings.endpoints)
        raise EtcdError(EtcdCause.UNREACHABLE, f"no answer from {endpoints} within {wait:g} s")


def init_shared(args: argparse.Namespace) -> int:
    """`tmkms state init [CHAIN_ID ...]`: create missing watermarks (see the module docstring)."""
    import trio

    from kms.ha.admin import RaiseOutcome

    path = config_path_from(args.config)
    config = load_config(path)
    if config.etcd is None:
        raise ConfigError(f"{path}: `state init` creates the shared watermarks of [etcd]: none")
    chains = [_chain(config, c) for c in args.chain_ids] if args.chain_ids else config.chains
    _check_etcd_files(config)
    states: dict[str, SignState] = {}
    unreadable: dict[str, StateError] = {}
    for chain in chains:
        try:
            states[chain.id] = read_state(chain.state_file) or SignState.INITIAL
        except StateError as exc:
            unreadable[chain.id] = exc
    settings = config.etcd
    done, error = trio.run(_create_shared, settings, states)
    failed = bool(unreadable)
    for chain in chains:
        key = f"{settings.prefix}{chain.id}"
        if chain.id in unreadable:
            print(f"chain {chain.id}: error: {unreadable[chain.id]}\n  shared: not created")
            continue
        print(f"chain {chain.id} (state file {chain.state_file}): {describe(states[chain.id])}")
        if chain.id not in done:
            print(f"  shared: not created (etcd key {key}): etcd could not be asked")
            continue
        raised = done[chain.id]
        failed = failed or raised.outcome is RaiseOutcome.MALFORMED
        print(f"  shared: {_init_text(key, raised, settings.host)}")
        if raised.outcome is RaiseOutcome.RAISED and states[chain.id] == SignState.INITIAL:
            print(
                "  note: created at height 0 (no state on this host): if this validator has "
                "signed before, raise it now with `tmkms state import` or `tmkms state set`"
            )
    if error is not None:
        print(f"etcd could not be asked: {error}")
        return 1 if not failed else 4
    return 4 if failed else 0


async def _create_shared(
    settings: EtcdSettings, states: dict[str, SignState]
) -> tuple[dict[str, Raised], str | None]:
    from kms.ha.admin import create_watermark
    from kms.ha.watermark import watermark_key

    done: dict[str, Raised] = {}
    try:
        async with _etcd_session(settings) as client:
            for chain_id, state in states.items():
                key = watermark_key(settings.prefix, chain_id)
                done[chain_id] = await create_watermark(client, key, state, settings.host)
    except KmsError as exc:
        return done, str(exc).removeprefix("etcd: ")
    return done, None


def _init_text(key: str, raised: Raised, host: str) -> str:
    from kms.ha.admin import RaiseOutcome

    stored = raised.stored
    where = f"etcd key {key}, revision {stored.mod_revision}"
    if raised.outcome is RaiseOutcome.MALFORMED:
        return (
            f"left alone: {where} does not hold a tmkms watermark ({stored.problem}); "
            "`tmkms state import --force` replaces it"
        )
    mark = stored.watermark
    assert mark is not None
    if raised.outcome is RaiseOutcome.EXISTS:
        return (
            f"exists at {describe(mark.state)}, written by {mark.host} ({where}): left as it "
            "is; `tmkms start` brings it and the local state together"
        )
    return f"created at {describe(mark.state)} by {host} ({where})"


def _report(chain: ChainConfig, before: SignState | None, after: SignState | None) -> None:
    print(f"chain {chain.id} (state file {chain.state_file})")
    print(f"  before: {describe(before)}")
    print(f"  after:  {describe(after)}" if after is not None else "  after:  unchanged")


def import_state(args: argparse.Namespace) -> int:
    """`tmkms state import CHAIN_ID FILE`: adopt a node's (or a tmkms) state, never lowering."""
    config = load_config(config_path_from(args.config))
    chain = _chain(config, args.chain_id)
    new, fmt = read_import_file(args.file, args.format)
    _check_etcd_files(config)
    print(f"read {fmt} state from {args.file}: {describe(new)}")
    with lock_state_files([chain.state_file], purpose=_PURPOSE):
        try:
            current = read_state(chain.state_file)
        except StateError as exc:
            if not args.force:
                raise StateError(f"{exc} (use --force to replace it)") from exc
            current = None
        if current is not None and not args.force:
            _refuse_lowering(chain, current, new)
        if current != new:
            StateFile(chain.state_file).save(new)
        _report(chain, current, new if current != new else None)
        if config.etcd is not None:
            return raise_shared(config.etcd, chain, new, force=args.force, command="import")
    return 0


def _refuse_lowering(chain: ChainConfig, current: SignState, new: SignState) -> None:
    if new.hrs < current.hrs:
        raise StateError(
            f"refusing to lower the state of {chain.id} from {current} to {new}: the KMS may "
            "already have signed above it (use --force only if you know nothing was)"
        )
    if new.hrs == current.hrs and new.block != current.block:
        raise StateError(
            f"refusing to replace the block signed at {current} for {chain.id} "
            f"({describe(current)}) with another ({describe(new)}); use --force to override"
        )


def set_height(args: argparse.Namespace) -> int:
    """`tmkms state set CHAIN_ID HEIGHT`: raise the state to HEIGHT/0/0 (never lower it)."""
    config = load_config(config_path_from(args.config))
    chain = _chain(config, args.chain_id)
    _check_etcd_files(config)
    new = SignState(args.height, 0, 0, BlockRef.NIL)
    with lock_state_files([chain.state_file], purpose=_PURPOSE):
        current = read_state(chain.state_file)
        if current is not None and args.height <= current.height:
            raise StateError(
                f"the state of {chain.id} is already at {current}; "
                f"`state set` only raises it (to a height above {current.height})"
            )
        StateFile(chain.state_file).save(new)
        _report(chain, current, new)
        if config.etcd is not None:
            return raise_shared(config.etcd, chain, new, force=False, command="set")
    return 0


def _check_etcd_files(config: KmsConfig) -> None:
    """Read ``[etcd]``'s password and TLS files now: a broken one stops before any write."""
    if config.etcd is not None:
        from kms.ha.settings import open_client

        open_client(config.etcd)


def raise_shared(
    settings: EtcdSettings, chain: ChainConfig, state: SignState, *, force: bool, command: str
) -> int:
    """Raise ``chain``'s watermark to ``state`` (after the local write) and print the outcome.

    Returns the exit code: 0 when the watermark now covers ``state``, 4 when a malformed
    value was left alone; raises a KmsError (exit 1) when etcd could not be asked.
    """
    import trio

    key = f"{settings.prefix}{chain.id}"
    try:
        before, raised = trio.run(_raise_shared, settings, chain.id, state, force)
    except KmsError as exc:
        print(f"  shared: not changed (etcd key {key}): etcd could not be asked")
        raise KmsError(
            f"the shared watermark of {chain.id} was not raised: {exc}. The local state is "
            "written; run this command again once etcd answers (tmkms start raises a lower "
            "watermark to the local state on first contact and adopts a higher one, but "
            "never creates a missing one)"
        ) from exc
    from kms.ha.admin import RaiseOutcome

    text = _raised_text(key, before, raised, state, host=settings.host, command=command)
    print(f"  shared: {text}")
    return 4 if raised.outcome is RaiseOutcome.MALFORMED else 0


async def _raise_shared(
    settings: EtcdSettings, chain_id: str, state: SignState, force: bool
) -> tuple[Stored, Raised]:
    from kms.ha.admin import raise_watermark, read_watermark
    from kms.ha.watermark import watermark_key

    key = watermark_key(settings.prefix, chain_id)
    async with _etcd_session(settings) as client:
        before = await read_watermark(client, key)
        raised = await raise_watermark(client, key, state, settings.host, force=force)
    return before, raised


def _raised_text(
    key: str, before: Stored, raised: Raised, state: SignState, *, host: str, command: str
) -> str:
    from kms.ha.admin import RaiseOutcome

    where = f"etcd key {key}"
    stored = raised.stored
    if raised.outcome is RaiseOutcome.MALFORMED:
        fix = (
            "use --force to replace it"
            if command == "import"
            else ("`tmkms state import --force` replaces it")
        )
        return (
            f"left alone: {where} (revision {stored.mod_revision}) does not hold a tmkms "
            f"watermark ({stored.problem}); {fix}"
        )
    mark = stored.watermark
    assert mark is not None
    if raised.outcome is RaiseOutcome.UNCHANGED:
        text = f"unchanged at {describe(mark.state)}, written by {mark.host} ({where})"
        if mark.state.hrs == state.hrs and mark.state.block != state.block:
            return text + (
                f": already at {state} with another block; both are kept, and tmkms start "
                "refuses whatever either forbids"
            )
        return text + f": already at or past {state}"
    was = before.watermark
    if was is None:
        verb = "replaced a malformed value with" if before.problem is not None else "created at"
        return f"{verb} {describe(mark.state)} by {host} ({where}, revision {stored.mod_revision})"
    if was.state.hrs > mark.state.hrs:
        verb = "lowered (--force)"
    elif was.state.hrs == mark.state.hrs:
        verb = "replaced (--force)"  # same height/round/step, another block
    else:
        verb = "raised"
    return (
        f"{verb} from {describe(was.state)} (by {was.host}) to {describe(mark.state)} by "
        f"{host} ({where}, revision {stored.mod_revision})"
    )
