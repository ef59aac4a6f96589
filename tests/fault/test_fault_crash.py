"""Crashes: the real `tmkms start` killed at random instants and at every step of the sign path.

After every crash the state file must load and cover every signature that left the process
(the node's, verified, and the KMS's own `signed` log lines), and the restarted KMS must
refuse a conflicting request at every height/round/step the node got a signature for.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
import trio

from kms.chain.state import SignState
from kms.chain.store import StateFile
from kms.sim.node import SignerClient, SimulatedNode, simulated_node
from kms.transport.address import Address
from tests.fault.kit import (
    CRASH_CODE,
    CRASH_POINTS,
    NIL,
    KmsHome,
    Ledger,
    SignedBook,
    Walker,
    accept,
    ask,
    block,
    fault_counted,
    label,
    log_book,
    stale_temp_files,
    start_kms,
)


def laddr_for(tmp_path: Path, transport: str) -> Address:
    if transport == "unix":
        return Address(scheme="unix", path=str(tmp_path / "pv.sock"))
    return Address(scheme="tcp", host="127.0.0.1", port=0)


def assert_covered(state: SignState, ledger: Ledger, where: str) -> None:
    """The state on disk is at or beyond every signature the node holds (same block if equal)."""
    for hrs, labels in ledger.book.slots.items():
        assert hrs <= state.hrs, f"{where}: signature at {hrs} but disk says {state}"
        if hrs == state.hrs:
            assert labels == {state.block.prefix()}, f"{where}: disk {state} vs signed {labels}"


async def probe_conflicts(
    client: SignerClient, ledger: Ledger, rng: random.Random, positions: list[tuple[int, int, int]]
) -> int:
    """Ask for a different block (and nil) at each signed position: all must be refused."""
    asked = 0
    for height, round_, step in positions:
        signed_labels = ledger.book.slots[(height, round_, step)]
        others = [block(rng)]
        if "<nil>" not in signed_labels:
            others.append(NIL)
        for other in others:
            asked += 1
            assert not await ask(client, ledger, step, (height, round_, other)), (
                f"conflicting {label(other)} signed at {height}/{round_}/{step} after {signed_labels}"
            )
    return asked


async def crash_once(
    tmp_path: Path, home: KmsHome, node: SimulatedNode, shim: dict[str, str]
) -> tuple[Ledger, Walker, list[str]]:
    """Walk heights through the shimmed KMS until it crashes; return what the node saw."""
    config = home.write_config([str(node.address)])
    ledger = Ledger(home.chain_id, home.verify_key)
    walker = Walker(ledger, random.Random(str(shim)))
    shim = {"FAULTKIT_STATE_DIR": str(home.state_dir), **shim}
    async with start_kms(config, shim=shim) as kms:
        client = await accept(node)
        await walker.walk(client)
        code = await kms.wait()
        assert code == CRASH_CODE, "\n".join(kms.lines[-30:])
    await client.aclose()
    return ledger, walker, kms.lines


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_crash_at_each_point_of_the_sign_path(tmp_path: Path, point: str) -> None:
    """os._exit at a named point (with a power cut's losses), restart, nothing conflicts."""
    home = KmsHome.create(tmp_path)
    StateFile(home.state_file).save(SignState.INITIAL)
    rng = random.Random(point)
    hit = rng.randint(3, 12)
    with trio.fail_after(40):
        async with simulated_node(home.chain_id, laddr_for(tmp_path, "unix")) as node:
            ledger, walker, lines = await crash_once(
                tmp_path,
                home,
                node,
                {
                    "FAULTKIT_CRASH_AT": point,
                    "FAULTKIT_CRASH_HIT": str(hit),
                    "FAULTKIT_POWER_CUT": "1",
                },
            )
            assert ledger.signatures >= 2, f"crashed at {point} before signing anything"
            state = home.load_state()  # never torn, whatever the point
            assert_covered(state, ledger, point)
            async with start_kms(home.write_config([str(node.address)])) as kms:
                client = await accept(node)
                positions = sorted(ledger.book.slots)
                probes = await probe_conflicts(client, ledger, rng, positions)
                if walker.in_flight is not None:  # signed or not: either way no conflict
                    probes += 1
                    await ask(
                        client, ledger, walker.in_flight[2], (*walker.in_flight[:2], block(rng))
                    )
                walker.height += 1
                await walker.walk(client, heights=3)
                lines += kms.lines
    conflicts = ledger.conflicts() + log_book(lines).conflicts()
    fault_counted(
        "crash points (os._exit + power cut)",
        crashes=1,
        requests=walker.requests + probes,
        signatures=ledger.signatures,
        conflicting_asked=probes,
        conflicts=len(conflicts),
    )
    assert not conflicts
    assert ledger.refused[2] >= len(positions), ledger.refused
    # a torn temp file may remain, but it never stands in for the state file
    assert all(
        name.startswith(f".{home.state_file.name}.") for name in stale_temp_files(home.state_dir)
    )


async def test_power_cut_emulation_catches_a_store_that_skips_fsync(tmp_path: Path) -> None:
    """The harness has teeth: without fsync (tmkms's store), a power cut loses a given signature."""
    home = KmsHome.create(tmp_path)
    StateFile(home.state_file).save(SignState.INITIAL)
    with trio.fail_after(30):
        async with simulated_node(home.chain_id, laddr_for(tmp_path, "unix")) as node:
            ledger, _, _ = await crash_once(
                tmp_path,
                home,
                node,
                {
                    "FAULTKIT_CRASH_AT": "after_reply",
                    "FAULTKIT_CRASH_HIT": "6",
                    "FAULTKIT_POWER_CUT": "1",
                    "FAULTKIT_SKIP_FSYNC": "1",
                },
            )
    state = home.load_state()
    assert ledger.signatures >= 2
    with pytest.raises(AssertionError, match="disk says"):
        assert_covered(state, ledger, "no fsync")


async def kill_loop(tmp_path: Path, transport: str, kills: int, seed: int) -> None:
    """Sign continuously, kill at a random instant, restart, probe, repeat ``kills`` times."""
    home = KmsHome.create(tmp_path)
    rng = random.Random(seed)
    ledger = Ledger(home.chain_id, home.verify_key)
    walker = Walker(ledger, rng)
    lines: list[str] = []
    probes = terms = 0
    previous: set[tuple[int, int, int]] = set()
    async with simulated_node(home.chain_id, laddr_for(tmp_path, transport)) as node:
        config = home.write_config([str(node.address)])
        for kill in range(kills + 1):
            async with start_kms(config) as kms:
                client = await accept(node)
                # everything signed since the last probe, plus a sample of older positions
                fresh = sorted(set(ledger.book.slots) - previous)
                older = sorted(previous)
                sample = rng.sample(older, min(10, len(older)))
                probes += await probe_conflicts(client, ledger, rng, fresh + sample)
                previous |= set(fresh)
                if walker.in_flight is not None:
                    probes += 1
                    await ask(
                        client, ledger, walker.in_flight[2], (*walker.in_flight[:2], block(rng))
                    )
                    walker.height += 1
                if kill == kills:
                    await walker.walk(client, heights=2)
                    lines += kms.lines
                    break
                # mostly SIGKILL; now and then SIGTERM, which must finish the request in flight
                signum = signal.SIGTERM if rng.random() < 0.25 else signal.SIGKILL
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(walker.walk, client)
                    await trio.sleep(rng.uniform(0.0, 0.25))
                    kms.send_signal(signum)
                assert await kms.wait() == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
                terms += signum == signal.SIGTERM
                lines += kms.lines
            await client.aclose()
            assert_covered(home.load_state(), ledger, f"kill {kill}")
    conflicts = ledger.conflicts() + log_book(lines).conflicts()
    logged = log_book(lines, SignedBook())
    fault_counted(
        f"SIGKILL/SIGTERM loop ({transport})",
        crashes=kills - terms,
        sigterms=terms,
        requests=walker.requests + probes,
        signatures=ledger.signatures,
        conflicting_asked=probes,
        conflicts=len(conflicts),
    )
    print(
        f"SIGKILL/SIGTERM loop {transport}: kills={kills} (SIGTERM {terms}) requests={walker.requests + probes} "
        f"signatures={ledger.signatures} logged={logged.count} probes={probes} "
        f"refused={dict(ledger.refused)}"
    )
    assert not conflicts, conflicts
    assert ledger.signatures > kills


async def test_sigkill_at_random_instants(tmp_path: Path) -> None:
    with trio.fail_after(50):
        await kill_loop(tmp_path, "unix", kills=6, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_sigkill_at_random_instants_many_times(tmp_path: Path, transport: str) -> None:
    with trio.fail_after(150):
        await kill_loop(tmp_path, transport, kills=30, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_crash_points_at_many_instants(tmp_path: Path, point: str) -> None:
    """Each crash point, at several hit counts, over tcp (Secret Connection) this time."""
    rng = random.Random(f"many-{point}")
    for attempt, hit in enumerate(sorted(rng.sample(range(2, 40), 3))):
        root = tmp_path / str(attempt)
        home = KmsHome.create(root)
        StateFile(home.state_file).save(SignState.INITIAL)
        with trio.fail_after(40):
            async with simulated_node(home.chain_id, laddr_for(root, "tcp")) as node:
                ledger, _, lines = await crash_once(
                    root,
                    home,
                    node,
                    {
                        "FAULTKIT_CRASH_AT": point,
                        "FAULTKIT_CRASH_HIT": str(hit),
                        "FAULTKIT_POWER_CUT": "1",
                    },
                )
                assert_covered(home.load_state(), ledger, f"{point}#{hit}")
                async with start_kms(home.write_config([str(node.address)])) as kms:
                    client = await accept(node)
                    probes = await probe_conflicts(client, ledger, rng, sorted(ledger.book.slots))
                    lines += kms.lines
        conflicts = ledger.conflicts() + log_book(lines).conflicts()
        fault_counted(
            "crash points, many instants (tcp)",
            crashes=1,
            signatures=ledger.signatures,
            conflicting_asked=probes,
            requests=probes + ledger.signatures,
            conflicts=len(conflicts),
        )
        assert not conflicts
