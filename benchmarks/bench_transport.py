"""Secret Connection costs next to the primitives they are built from.

Run from the repository root: ``python benchmarks/bench_transport.py [--quick]``.
Prints the median per-operation time of each measurement, and each composite's ratio to a
floor measured in the same run (the raw crypto it cannot avoid).
"""

from __future__ import annotations

import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio
import trio.testing
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from merlin_transcripts import MerlinTranscript
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.signing import SigningKey

from kms.transport.frames import FrameOpener, FrameSealer
from kms.transport.secret_connection import (
    SecretConnection,
    derive_key_material,
    transcript_challenge,
)
from kms.transport.stream import SecretStream

HANDSHAKE_TARGET_MS = 5.0
KEY_A = SigningKey(bytes(range(32)))
KEY_B = SigningKey(bytes(range(32, 64)))


def median_seconds(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the mean time of one call in a run of ``number``."""
    fn()  # warm up
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(run / number for run in runs)


def handshake_pair() -> tuple[SecretConnection, SecretConnection]:
    """Both sides of a full handshake, in memory (two rounds of message exchange)."""
    a, b = SecretConnection(KEY_A), SecretConnection(KEY_B)
    for _ in range(2):
        a_out, b_out = a.data_to_send(), b.data_to_send()
        b.receive_data(a_out)
        a.receive_data(b_out)
    assert a.handshake_complete and b.handshake_complete
    return a, b


def handshake_floor() -> None:
    """The crypto a handshake cannot avoid, for both sides: 2x(keygen, DH, sign, verify,
    HKDF, Merlin challenge)."""
    for key in (KEY_A, KEY_B):
        private = bytes(range(1, 33))
        public = crypto_scalarmult_base(private)
        dh = crypto_scalarmult(private, public)
        derive_key_material(dh)
        challenge = transcript_challenge(public, public, dh)
        signed = key.sign(challenge)
        key.verify_key.verify(signed)


def main() -> None:
    quick = "--quick" in sys.argv
    scale = 10 if quick else 1
    rows: list[tuple[str, float, str]] = []

    def record(name: str, seconds: float, note: str = "") -> float:
        rows.append((name, seconds, note))
        return seconds

    # ---- handshake -------------------------------------------------------------------
    handshake = record(
        "full handshake, both sides, in memory",
        median_seconds(handshake_pair, 40 // scale or 1, 7),
    )
    floor = record(
        "floor: 2x (X25519 keygen + DH, HKDF, Merlin, Ed25519 sign + verify)",
        median_seconds(handshake_floor, 40 // scale or 1, 7),
    )
    private, public = bytes(range(1, 33)), crypto_scalarmult_base(bytes(range(33, 65)))
    x25519 = record(
        "one X25519 DH", median_seconds(lambda: crypto_scalarmult(private, public), 2000, 7)
    )
    sign = record(
        "one Ed25519 sign (32 bytes)", median_seconds(lambda: KEY_A.sign(bytes(32)), 2000, 7)
    )
    lo, hi, dh = bytes(32), bytes(range(32)), bytes(range(1, 33))
    ours = record(
        "Merlin challenge (kms.transport.merlin)",
        median_seconds(lambda: transcript_challenge(lo, hi, dh), 200 // scale, 7),
    )

    def package_challenge() -> bytes:
        transcript = MerlinTranscript(b"TENDERMINT_SECRET_CONNECTION_TRANSCRIPT_HASH")
        transcript.append_message(b"EPHEMERAL_LOWER_PUBLIC_KEY", lo)
        transcript.append_message(b"EPHEMERAL_UPPER_PUBLIC_KEY", hi)
        transcript.append_message(b"DH_SECRET", dh)
        return bytes(transcript.challenge_bytes(b"SECRET_CONNECTION_MAC", 32))

    assert package_challenge() == transcript_challenge(lo, hi, dh)
    package = record(
        "Merlin challenge (merlin-transcripts package)",
        median_seconds(package_challenge, 50 // scale or 1, 5),
    )

    # ---- frames ----------------------------------------------------------------------
    key, nonce, frame = bytes(range(32)), bytes(12), bytes(1028)
    aead = ChaCha20Poly1305(key)
    raw = record(
        "floor: raw ChaCha20-Poly1305 seal+open of 1028 bytes",
        median_seconds(
            lambda: aead.decrypt(nonce, aead.encrypt(nonce, frame, None), None), 20000, 7
        ),
    )
    sealer, opener, kib = FrameSealer(key), FrameOpener(key), bytes(1024)
    framed = record(
        "seal+open one 1 KiB frame (FrameSealer/FrameOpener)",
        median_seconds(lambda: opener.open(sealer.seal(kib)), 20000 // scale, 7),
    )
    a, b = handshake_pair()

    def machine_round() -> bytes:
        a.send(kib)
        b.receive_data(a.data_to_send())
        return b.next_plaintext()

    machine = record(
        "seal+open one 1 KiB frame through the state machines",
        median_seconds(machine_round, 20000 // scale, 7),
    )

    # ---- trio ------------------------------------------------------------------------
    async def stream_ping_pong(rounds: int, secure: bool) -> float:
        x: trio.abc.Stream
        y: trio.abc.Stream
        x, y = trio.testing.memory_stream_pair()
        if secure:
            x, y = SecretStream(x, KEY_A), SecretStream(y, KEY_B)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(x.do_handshake)
                nursery.start_soon(y.do_handshake)
        start = trio.current_time()
        for _ in range(rounds):
            await x.send_all(kib)
            got = 0
            while got < len(kib):
                got += len(await y.receive_some())
        return (trio.current_time() - start) / rounds

    rounds = 5000 // scale
    bare = record(
        "floor: 1 KiB through a bare trio memory stream",
        statistics.median(trio.run(stream_ping_pong, rounds, False) for _ in range(5)),
    )
    streamed = record(
        "1 KiB through SecretStream over a memory stream",
        statistics.median(trio.run(stream_ping_pong, rounds, True) for _ in range(5)),
    )

    width = max(len(name) for name, _, _ in rows)
    print(f"{'measurement':<{width}}  median")
    for name, seconds, _ in rows:
        value = f"{seconds * 1e3:8.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:8.2f} us"
        print(f"{name:<{width}}  {value}")
    print()
    print(f"handshake / floor                 {handshake / floor:6.2f}x")
    print(f"handshake / (2 DH + 2 sign)       {handshake / (2 * x25519 + 2 * sign):6.2f}x")
    print(f"merlin package / ours             {package / ours:6.2f}x")
    print(f"frame seal+open / raw AEAD        {framed / raw:6.2f}x")
    print(f"machine seal+open / raw AEAD      {machine / raw:6.2f}x")
    print(f"SecretStream 1 KiB / bare stream  {streamed / bare:6.2f}x")
    verdict = "meets" if handshake * 1e3 <= HANDSHAKE_TARGET_MS else "MISSES"
    print(f"handshake {handshake * 1e3:.2f} ms {verdict} the {HANDSHAKE_TARGET_MS} ms target")


if __name__ == "__main__":
    main()
