"""What importing a layer pulls in, seen from a fresh interpreter.

kms.protocol is sans-IO and betterproto-free; the metric counters import nothing of the sign
path; loading tmkms.toml (every command does) never loads trio.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import REPO

PROBE = """
import importlib, pkgutil, sys
import kms.protocol
names = [m.name for m in pkgutil.iter_modules(kms.protocol.__path__)]
for name in names:
    importlib.import_module("kms.protocol." + name)
print(",".join(sorted(names)))
for banned in ("trio", "betterproto"):
    assert banned not in sys.modules, banned + " was imported"
"""


def fresh_interpreter(code: str) -> str:
    """Run ``code`` in a new interpreter with the repository first on the path; its stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def loaded_after(statement: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with one of ``prefixes`` that ``statement`` loads."""
    code = f"import sys\n{statement}\nprint(','.join(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    out = fresh_interpreter(code)
    return out.split(",") if out else []


def test_protocol_modules_import_neither_trio_nor_betterproto() -> None:
    """A fresh interpreter imports every kms.protocol module without trio or betterproto."""
    imported = set(fresh_interpreter(PROBE).split(","))
    assert {
        "codec",
        "connection",
        "delimited",
        "messages",
        "signbytes",
        "wire",
        "varint",
    } <= imported


def test_the_metric_counters_import_nothing_of_the_sign_path() -> None:
    sign_path = ("trio", "kms.chain", "kms.handler", "kms.session", "kms.service", "providers")
    assert loaded_after("import kms.ops.stats", sign_path) == []


def test_loading_the_configuration_never_loads_trio() -> None:
    assert loaded_after("import kms.config", ("trio", "h11", "kms.ha")) == []
    assert "trio" in loaded_after("import kms.ha.client", ("trio",))  # the probe sees imports
