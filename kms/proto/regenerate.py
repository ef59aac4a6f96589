"""Regenerate the betterproto classes in ``kms/proto/gen`` from the ``.proto`` sources.

Run from the repository root with the ``proto`` extra installed::

    python -m kms.proto.regenerate

It wipes ``kms/proto/gen`` and runs ``grpc_tools.protoc`` with the betterproto 2 plugin
(``protoc-gen-python_betterproto``, found beside the running interpreter), the same as::

    PATH=/work/venv/bin:$PATH python -m grpc_tools.protoc -I kms/proto \\
        --python_betterproto_out=kms/proto/gen <every .proto under kms/proto>
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
GEN_DIR = PROTO_DIR / "gen"


def proto_sources() -> list[Path]:
    """Every ``.proto`` file under ``kms/proto`` (the generated tree excluded), sorted."""
    return sorted(p for p in PROTO_DIR.rglob("*.proto") if GEN_DIR not in p.parents)


def regenerate() -> None:
    """Replace ``kms/proto/gen`` with freshly generated betterproto code."""
    shutil.rmtree(GEN_DIR, ignore_errors=True)
    GEN_DIR.mkdir()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    sources = [str(p.relative_to(PROTO_DIR)) for p in proto_sources()]
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_betterproto_out={GEN_DIR}",
        *sources,
    ]
    subprocess.run(command, cwd=PROTO_DIR, env=env, check=True)
    # The plugin does not always write the root package file; the imports need it.
    (GEN_DIR / "__init__.py").touch()


if __name__ == "__main__":
    regenerate()
