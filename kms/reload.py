"""What a reload of tmkms.toml changes in a running KMS, decided before anything changes.

:func:`plan_reload` compares the running configuration with the new file's (already fully
validated by the loader) and returns a :class:`ReloadPlan`: the chains and validators to add
and to remove, the key sections to load, and the changes that cannot be applied while the
process runs (named in one warning; they wait for a restart). Everything else keeps running
untouched: an unchanged validator keeps its connection.

Refused outright (a ConfigError, nothing changes):

* a state file that moves from one chain ID to another: the second chain would start from
  the first chain's heights, or the two would share one file;
* a new chain whose consensus key cannot be loaded live: it lives in an HSM section that
  was already open and changed, or in no key section at all.

What cannot change live: a chain's own settings (its state file, key format, extensions,
state hook; its validators keep running on the old ones), an HSM provider section that was
open already, a softsign section of a running chain, ``[metrics]``, and ``[etcd]``.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from kms.config import ChainConfig, KmsConfig, SoftsignConfig, ValidatorConfig
from kms.errors import ConfigError

__all__ = ["ReloadPlan", "merge_config", "plan_reload"]


@attrs.frozen
class ReloadPlan:
    """The difference a reload makes (see the module docstring)."""

    add_chains: tuple[ChainConfig, ...] = ()
    remove_chains: tuple[str, ...] = ()
    add_validators: tuple[ValidatorConfig, ...] = ()
    remove_validators: tuple[ValidatorConfig, ...] = ()
    add_softsign: tuple[SoftsignConfig, ...] = ()
    not_applied: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to add or remove."""
        return not (
            self.add_chains or self.remove_chains or self.add_validators or self.remove_validators
        )

    def summary(self) -> str:
        """One line: what is added and removed."""
        parts = []
        if self.add_chains:
            parts.append("added chain(s) " + ", ".join(c.id for c in self.add_chains))
        if self.remove_chains:
            parts.append("removed chain(s) " + ", ".join(self.remove_chains))
        parts.append(
            f"{len(self.add_validators)} validator(s) added, {len(self.remove_validators)} removed"
        )
        return "; ".join(parts)


def plan_reload(running: KmsConfig, new: KmsConfig) -> ReloadPlan:
    """What reloading ``new`` over ``running`` does; ConfigError if it must be refused."""
    old_chains = {chain.id: chain for chain in running.chains}
    new_chains = {chain.id: chain for chain in new.chains}
    _refuse_moved_state_files(old_chains, new_chains, new)
    not_applied: list[str] = []
    changed = {
        cid for cid in old_chains.keys() & new_chains.keys() if old_chains[cid] != new_chains[cid]
    }
    not_applied += [f"[[chain]] {cid!r} settings" for cid in sorted(changed)]
    added = [chain for cid, chain in new_chains.items() if cid not in old_chains]
    removed = [cid for cid in old_chains if cid not in new_chains]
    added_ids = {chain.id for chain in added}

    softsign = _new_softsign(running, new, added_ids, not_applied)
    hsm_chains = _hsm_chains(running, new, not_applied)
    keyed = {cid for section in softsign for cid in section.chain_ids}
    for chain in added:
        if chain.id not in keyed:
            where = "an HSM section that cannot change live" if chain.id in hsm_chains else "none"
            raise _error(
                new,
                chain.id,
                "id",
                f"chain {chain.id!r} cannot be added without a restart: its consensus key "
                f"is in {where} (add a [[providers.softsign]] key for it, or restart)",
            )

    def frozen(validator: ValidatorConfig) -> bool:  # its chain keeps the old settings
        return validator.chain_id in changed

    old_validators = [v for v in running.validators if not frozen(v)]
    new_validators = [v for v in new.validators if not frozen(v)]
    if running.metrics != new.metrics:
        not_applied.append("[metrics]")
    if running.etcd != new.etcd:
        not_applied.append("[etcd]")
    return ReloadPlan(
        add_chains=tuple(added),
        remove_chains=tuple(removed),
        add_validators=tuple(_missing(new_validators, old_validators)),
        remove_validators=tuple(_missing(old_validators, new_validators)),
        add_softsign=tuple(softsign),
        not_applied=tuple(not_applied),
    )


def merge_config(running: KmsConfig, new: KmsConfig, plan: ReloadPlan) -> KmsConfig:
    """The configuration served once ``plan`` is applied: ``new``, except what waits for a
    restart (changed chains and their validators, HSM sections, ``[metrics]``...)."""
    old_chains = {chain.id: chain for chain in running.chains}
    chains = tuple(old_chains.get(chain.id, chain) for chain in new.chains)
    frozen = {c.id for c in new.chains if c.id in old_chains and old_chains[c.id] != c}
    validators = tuple(v for v in running.validators if v.chain_id in frozen) + tuple(
        v for v in new.validators if v.chain_id not in frozen
    )
    removed = set(plan.remove_chains)
    softsign = (
        tuple(s for s in running.softsign if not set(s.chain_ids) <= removed) + plan.add_softsign
    )
    return attrs.evolve(
        new,
        chains=chains,
        validators=validators,
        softsign=softsign,
        metrics=running.metrics,
        yubihsm=running.yubihsm,
        pkcs11=running.pkcs11,
        etcd=running.etcd,
    )


def _refuse_moved_state_files(
    old: dict[str, ChainConfig], new: dict[str, ChainConfig], config: KmsConfig
) -> None:
    owners = {chain.state_file.resolve(): cid for cid, chain in old.items()}
    for cid, chain in new.items():
        owner = owners.get(chain.state_file.resolve())
        if owner is not None and owner != cid:
            raise _error(
                config,
                cid,
                "state_file",
                f"state file {chain.state_file} belongs to chain {owner!r}, not {cid!r}: "
                "a state file never moves to another chain",
            )


def _error(config: KmsConfig, chain_id: str, key: str, problem: str) -> ConfigError:
    """A ConfigError naming the file, the chain's section and the key, as the loader does."""
    return ConfigError(f'{config.path}: [[chain]] (id = "{chain_id}"): key "{key}": {problem}')


def _new_softsign(
    running: KmsConfig, new: KmsConfig, added: set[str], not_applied: list[str]
) -> list[SoftsignConfig]:
    """Softsign sections to load: those of new chains only."""
    loaded = set(running.softsign)
    sections = []
    for section in new.softsign:
        if section in loaded:
            continue
        if set(section.chain_ids) <= added:
            sections.append(section)
        else:
            not_applied.append(f"[[providers.softsign]] {section.path}")
    removed_chains = {c.id for c in running.chains} - {c.id for c in new.chains}
    for section in loaded - set(new.softsign):
        if not set(section.chain_ids) <= removed_chains:  # a running chain's key file
            not_applied.append(f"[[providers.softsign]] {section.path} (removed)")
    return sections


def _hsm_chains(running: KmsConfig, new: KmsConfig, not_applied: list[str]) -> set[str]:
    """Chains whose keys are in HSM sections; a changed section is named in ``not_applied``."""
    chains: set[str] = set()
    for name, before, after in (
        ("yubihsm", running.yubihsm, new.yubihsm),
        ("pkcs11", running.pkcs11, new.pkcs11),
    ):
        if before != after:
            not_applied.append(f"[[providers.{name}]]")
        if after is not None:
            for key in after.keys:
                chains.update(key.chain_ids)
    return chains


def _missing(
    wanted: Iterable[ValidatorConfig], present: Iterable[ValidatorConfig]
) -> list[ValidatorConfig]:
    have = list(present)
    return [validator for validator in wanted if validator not in have]
