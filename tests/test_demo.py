"""`tmkms demo`, the README's first command, works and shows what it promises."""

from __future__ import annotations

from tests.support.kmsproc import run_tmkms


def test_demo_signs_heights_and_refuses_a_double_sign() -> None:
    result = run_tmkms("demo")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "connected to validator successfully" in output
    assert output.count("signed Precommit:") == 5
    assert "20 signatures received, all verified" in output
    assert (
        "refused as expected: RemoteSignerError 2: double signing requested at height: 5" in output
    )
    assert "attempted double sign Precommit at h/r/s: 5/0/2" in output
    assert "KMS exited with status 0" in output
