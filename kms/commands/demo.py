"""`tmkms demo [--ha]`: a self-contained run against simulated nodes.

``tmkms demo``: one KMS and one node (:mod:`kms.sim.demo`). ``tmkms demo --ha``: a
3-member etcd cluster, two KMS hosts sharing a key and two nodes (:mod:`kms.sim.demo_ha`);
without an ``etcd`` binary it is one ``error:`` line and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING

from kms.errors import KmsError

if TYPE_CHECKING:
    from kms.commands import Subparsers


def add_commands(subparsers: Subparsers) -> None:
    """Register `demo`."""
    parser = subparsers.add_parser(
        "demo", help="sign against a simulated CometBFT node, no setup needed"
    )
    parser.add_argument(
        "--ha",
        action="store_true",
        help="high availability: two KMS hosts sharing one key and a watermark on a local "
        "3-member etcd cluster (needs the etcd binary)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Hand over to :func:`kms.sim.demo.main` (or ``demo_ha.main`` with ``--ha``)."""
    module = "kms.sim.demo_ha" if args.ha else "kms.sim.demo"
    try:
        demo = importlib.import_module(module)
    except ImportError as exc:
        raise KmsError(f"the demo is not available in this installation: {exc}") from exc
    return int(demo.main())
