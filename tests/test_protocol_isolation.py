"""kms.protocol is sans-IO and betterproto-free: importing all of it pulls in neither."""

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


def test_protocol_modules_import_neither_trio_nor_betterproto() -> None:
    """A fresh interpreter imports every kms.protocol module without trio or betterproto."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.strip().split(","))
    assert {
        "codec",
        "connection",
        "delimited",
        "messages",
        "signbytes",
        "wire",
        "varint",
    } <= imported
