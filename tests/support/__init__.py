"""Helpers shared by the tests: real processes and real parts started for them."""

from pathlib import Path

#: The repository's root (where pyproject.toml, kms/ and fixtures/ are).
REPO = Path(__file__).resolve().parents[2]
