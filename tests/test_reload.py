"""Live reload: the plan (pure), and the in-process Service applying it while chains sign."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
import trio

from kms.chain.store import StateFile
from kms.config import KmsConfig, load_config
from kms.errors import ConfigError
from kms.protocol.messages import SignedMsgType
from kms.reload import merge_config, plan_reload
from kms.service import Service
from kms.sim.consensus import make_vote, random_block_id
from kms.sim.node import SignerClient, simulated_node
from kms.transport.address import Address
from tests.support.kmsproc import unix_config, unix_home


def load(tmp_path: Path, chains: list[str], extra: str = "", name: str = "tmkms.toml") -> KmsConfig:
    path = tmp_path / name
    path.write_text(unix_config(tmp_path, chains, extra))
    return load_config(path)


# ---------------------------------------------------------------- the plan


def test_plan_adds_and_removes_chains_and_keeps_the_rest(tmp_path: Path) -> None:
    unix_home(tmp_path, ["a-1", "b-1", "c-1"])
    running = load(tmp_path, ["a-1", "b-1"])
    new = load(tmp_path, ["a-1", "c-1"], name="new.toml")
    plan = plan_reload(running, new)
    assert [c.id for c in plan.add_chains] == ["c-1"]
    assert plan.remove_chains == ("b-1",)
    assert [v.chain_id for v in plan.add_validators] == ["c-1"]
    assert [v.chain_id for v in plan.remove_validators] == ["b-1"]
    assert [s.chain_ids for s in plan.add_softsign] == [("c-1",)]
    assert plan.not_applied == ()
    assert plan.summary() == (
        "added chain(s) c-1; removed chain(s) b-1; 1 validator(s) added, 1 removed"
    )
    merged = merge_config(running, new, plan)
    assert [c.id for c in merged.chains] == ["a-1", "c-1"]
    assert [s.chain_ids for s in merged.softsign] == [("a-1",), ("c-1",)]


def test_the_same_file_plans_nothing(tmp_path: Path) -> None:
    unix_home(tmp_path, ["a-1"])
    plan = plan_reload(load(tmp_path, ["a-1"]), load(tmp_path, ["a-1"], name="same.toml"))
    assert plan.empty and plan.not_applied == ()


def test_what_cannot_change_live_is_named_and_kept(tmp_path: Path) -> None:
    unix_home(tmp_path, ["a-1"])
    running = load(tmp_path, ["a-1"])
    changed = unix_config(tmp_path, ["a-1"]).replace('type = "hex"', 'type = "cosmos-json"')
    path = tmp_path / "new.toml"
    path.write_text(changed + '\n[metrics]\nbind_address = "127.0.0.1:9999"\n')
    new = load_config(path)
    plan = plan_reload(running, new)
    assert plan.empty
    assert plan.not_applied == ("[[chain]] 'a-1' settings", "[metrics]")
    merged = merge_config(running, new, plan)
    assert merged.chains == running.chains and merged.metrics == running.metrics


def test_a_state_file_never_moves_to_another_chain(tmp_path: Path) -> None:
    unix_home(tmp_path, ["a-1", "b-1"])
    running = load(tmp_path, ["a-1"])
    moved = unix_config(tmp_path, ["b-1"]).replace("state/b-1.json", "state/a-1.json")
    path = tmp_path / "moved.toml"
    path.write_text(moved)
    with pytest.raises(
        ConfigError,
        match=r'\[\[chain\]\] \(id = "b-1"\): key "state_file": .*belongs to chain \'a-1\'',
    ):
        plan_reload(running, load_config(path))


def test_a_new_chain_without_a_key_it_can_load_is_refused(tmp_path: Path) -> None:
    unix_home(tmp_path, ["a-1", "b-1"])
    running = load(tmp_path, ["a-1"])
    # b-1's key moves into the section a-1 already uses: that section cannot change live
    text = unix_config(tmp_path, ["a-1", "b-1"]).replace(
        'chain_ids = ["a-1"]', 'chain_ids = ["a-1", "b-1"]'
    )
    text = text.replace(
        f'[[providers.softsign]]\nchain_ids = ["b-1"]\nkey_type = "consensus"\npath = "{tmp_path}/secrets/b-1.key"\n',
        "",
    )
    path = tmp_path / "new.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="chain 'b-1' cannot be added without a restart"):
        plan_reload(running, load_config(path))


# ---------------------------------------------------------------- the service, in process


async def sign_steps(client: SignerClient, heights: range, rng: random.Random) -> list[int]:
    """Prevotes at ``heights``; the heights the KMS signed."""
    signed = []
    for height in heights:
        vote = make_vote(SignedMsgType.PREVOTE, height, 0, random_block_id(rng))
        reply = await client.sign_vote(vote)
        if reply.error is None:
            signed.append(height)
    return signed


async def test_reload_adds_and_removes_a_chain_while_another_signs(tmp_path: Path) -> None:
    unix_home(tmp_path, ["a-1", "b-1"])
    service = await Service.open(load(tmp_path, ["a-1"]))
    rng = random.Random(1)
    a_addr = Address(scheme="unix", path=f"{tmp_path}/a-1.sock")
    b_addr = Address(scheme="unix", path=f"{tmp_path}/b-1.sock")
    with trio.fail_after(30):
        async with (
            simulated_node("a-1", a_addr) as node_a,
            simulated_node("b-1", b_addr) as node_b,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(service.serve)
            client_a = await node_a.accept()
            assert await sign_steps(client_a, range(1, 4), rng) == [1, 2, 3]
            plan = await service.reload(load(tmp_path, ["a-1", "b-1"], name="two.toml"))
            assert [c.id for c in plan.add_chains] == ["b-1"]
            client_b = await node_b.accept()
            assert await sign_steps(client_b, range(1, 3), rng) == [1, 2]
            assert await sign_steps(client_a, range(4, 6), rng) == [4, 5]  # same connection
            assert [v.chain_id for v in service.metrics.validators] == ["a-1", "b-1"]

            plan = await service.reload(load(tmp_path, ["a-1"], name="one.toml"))
            assert plan.remove_chains == ("b-1",)
            assert "b-1" not in service.trackers and "b-1" not in service.registry
            assert [v.chain_id for v in service.metrics.validators] == ["a-1"]
            with pytest.raises(trio.BrokenResourceError):
                await sign_steps(client_b, range(3, 4), rng)
            assert await sign_steps(client_a, range(6, 8), rng) == [6, 7]
            nursery.cancel_scope.cancel()
    await service.aclose()


async def test_a_bad_reload_changes_nothing(tmp_path: Path) -> None:
    unix_home(tmp_path, ["a-1", "b-1"])
    service = await Service.open(load(tmp_path, ["a-1"]))
    before = (service.config, dict(service.trackers), list(service.registry.chains()))
    (tmp_path / "secrets" / "b-1.key").write_text("not a key\n")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.serve)
            with pytest.raises(Exception, match=r"b-1\.key"):
                await service.reload(load(tmp_path, ["a-1", "b-1"], name="bad.toml"))
            assert (service.config, service.trackers, service.registry.chains()) == before
            nursery.cancel_scope.cancel()
    await service.aclose()


@pytest.mark.parametrize("seed", range(6))
async def test_reload_racing_with_signing_never_rewinds_nor_conflicts(
    tmp_path: Path, seed: int
) -> None:
    """Chain b-1 is removed and added again while its node asks for conflicting votes.

    Each round the node asks for block X at a step, then (after a reload at a random moment,
    possibly while the request is in flight) for block Y at the same step: never both signed,
    and the state file never goes back.
    """
    rng = random.Random(seed)
    unix_home(tmp_path, ["a-1", "b-1"])
    both = load(tmp_path, ["a-1", "b-1"], name="both.toml")
    only_a = load(tmp_path, ["a-1"], name="only-a.toml")
    service = await Service.open(both)
    b_addr = Address(scheme="unix", path=f"{tmp_path}/b-1.sock")
    signed: dict[int, set[bytes]] = {}
    highest = 0

    async def ask(client: SignerClient, height: int) -> None:
        block = random_block_id(rng)
        vote = make_vote(SignedMsgType.PREVOTE, height, 0, block)
        reply = await client.sign_vote(vote)
        if reply.error is None:
            signed.setdefault(height, set()).add(block.hash)

    async def ask_racing(client: SignerClient, height: int) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # the reload won the race
            await ask(client, height)

    with trio.fail_after(60):
        async with simulated_node("b-1", b_addr) as node, trio.open_nursery() as nursery:
            await nursery.start(service.serve)
            client = await node.accept()
            for height in range(1, 25):
                async with trio.open_nursery() as race:
                    race.start_soon(ask_racing, client, height)
                    await trio.sleep(rng.random() * 0.004)
                    race.start_soon(service.reload, only_a)  # b-1 goes away...
                with pytest.raises(trio.BrokenResourceError):
                    await ask(client, height)  # ...its connection with it
                await service.reload(both)  # and comes back: state read from its file
                client = await node.accept()
                await ask(client, height)  # a conflicting block at the same step
                state = StateFile(tmp_path / "state" / "b-1.json").load()
                assert state.height >= highest
                highest = state.height
            nursery.cancel_scope.cancel()
    await service.aclose()
    assert all(len(blocks) == 1 for blocks in signed.values()), signed
    assert len(signed) >= 12  # the race did not simply refuse everything
