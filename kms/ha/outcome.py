"""What a shared watermark store reports: check-and-set outcomes, and first contact.

:class:`CasObserver` is the seam for metrics: the store calls it once per check-and-set,
and this package never imports metrics code. :class:`Reconciled` says what first contact
with etcd did to the local state and the watermark.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from kms.chain.state import SignState
from kms.ha.cas import ReconcileAction

__all__ = ["CasObserver", "Reconciled", "Silent"]


class CasObserver(Protocol):
    """Where check-and-set outcomes go (metrics), without this package importing them."""

    def cas_won(self, chain_id: str, seconds: float) -> None: ...

    def cas_lost(self, chain_id: str) -> None: ...

    def cas_refused(self, chain_id: str, cause: str) -> None: ...


class Silent:
    """The observer used when none is given."""

    def cas_won(self, chain_id: str, seconds: float) -> None:
        pass

    def cas_lost(self, chain_id: str) -> None:
        pass

    def cas_refused(self, chain_id: str, cause: str) -> None:
        pass


@attrs.frozen
class Reconciled:
    """What first contact did: ``local`` and ``shared`` are the states it left behind."""

    action: ReconcileAction
    local: SignState
    shared: SignState
    writer: str  # the host named in the stored watermark
