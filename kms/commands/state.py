"""`tmkms state show|import|set`: read and (carefully) change each chain's double-sign state.

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
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kms.chain.filepv import parse_cometbft_state
from kms.chain.state import MAX_HEIGHT_VALUE, BlockRef, SignState
from kms.chain.stateformat import parse_state
from kms.chain.store import StateFile, read_state
from kms.commands import add_group
from kms.config import ChainConfig, KmsConfig, config_path_from, load_config
from kms.errors import ConfigError, StateError
from kms.lock import lock_state_files, state_lock_holder

if TYPE_CHECKING:
    from kms.commands import Subparsers

_PURPOSE = "stop it before changing the state"


def add_commands(subparsers: Subparsers) -> None:
    """Register `state show`, `state import` and `state set`."""
    group = add_group(subparsers, "state", "show or change the double-sign state of each chain")
    show = group.add_parser("show", help="print every chain's last signed state")
    _config_option(show)
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(handler=show_states)

    load = group.add_parser(
        "import", help="take a chain's state from priv_validator_state.json or a tmkms state file"
    )
    _config_option(load)
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
    _config_option(raise_)
    raise_.add_argument("chain_id", metavar="CHAIN_ID")
    raise_.add_argument("height", metavar="HEIGHT", type=_height)
    raise_.set_defaults(handler=set_height)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="path to tmkms.toml (default: $TMKMS_CONFIG_FILE, else ./tmkms.toml)",
    )


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
    """`tmkms state show`: every chain's state; exit 4 if any state file is unreadable."""
    config = load_config(config_path_from(args.config))
    entries: list[dict[str, Any]] = []
    lines: list[str] = []
    for chain in config.chains:
        entry: dict[str, Any] = {"chain_id": chain.id, "state_file": str(chain.state_file)}
        entries.append(entry)
        try:
            state = read_state(chain.state_file)
            pid = state_lock_holder(chain.state_file)
        except StateError as exc:
            entry["error"] = str(exc)
            lines.append(f"{chain.id}: error: {exc}")
            continue
        entry["exists"] = state is not None
        entry["locked_by_pid"] = pid
        if state is not None:
            entry.update(state_json(state))
        head = describe(state) if state is not None else "nothing signed yet (no state file)"
        held = "" if pid is None else f" (in use by a running tmkms start, pid {pid or '?'})"
        lines.append(f"{chain.id}: {head}\n    {chain.state_file}{held}")
    print(json.dumps({"chains": entries}, indent=2) if args.json else "\n".join(lines))
    return 4 if any("error" in entry for entry in entries) else 0


def _report(chain: ChainConfig, before: SignState | None, after: SignState | None) -> None:
    print(f"chain {chain.id} (state file {chain.state_file})")
    print(f"  before: {describe(before)}")
    print(f"  after:  {describe(after)}" if after is not None else "  after:  unchanged")


def import_state(args: argparse.Namespace) -> int:
    """`tmkms state import CHAIN_ID FILE`: adopt a node's (or a tmkms) state, never lowering."""
    config = load_config(config_path_from(args.config))
    chain = _chain(config, args.chain_id)
    new, fmt = read_import_file(args.file, args.format)
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
        if current == new:
            _report(chain, current, None)
            return 0
        StateFile(chain.state_file).save(new)
    _report(chain, current, new)
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
    return 0
