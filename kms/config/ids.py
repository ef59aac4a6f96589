"""Chain IDs as tmkms (cometbft-rs) accepts them: 1-50 characters of ``[A-Za-z0-9._-]``."""

from __future__ import annotations

import re

from kms.config.tables import Table, describe

MAX_CHAIN_ID_LENGTH = 50
_CHAIN_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def chain_id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid chain ID, or None when it is."""
    if not value or len(value) > MAX_CHAIN_ID_LENGTH:
        return f"chain id must be 1 to {MAX_CHAIN_ID_LENGTH} characters, got {len(value)}"
    if not _CHAIN_ID.match(value):
        return f"invalid chain id {describe(value)}: use only A-Z a-z 0-9 . _ -"
    return None


def chain_id(table: Table, key: str) -> str:
    """A required, valid chain ID."""
    value: str = table.string(key, nonempty=False)
    problem = chain_id_problem(value)
    if problem:
        raise table.error(key, problem)
    return value


def chain_id_list(table: Table, key: str) -> tuple[str, ...]:
    """A non-empty array of valid, distinct chain IDs."""
    values = table.string_list(key)
    for index, value in enumerate(values):
        problem = chain_id_problem(value)
        if problem:
            raise table.section.error(f"{table.name(key)}[{index}]", problem)
        if value in values[:index]:
            raise table.section.error(
                f"{table.name(key)}[{index}]", f"chain id {describe(value)} listed twice"
            )
    return values
