"""`[etcd]` in tmkms.toml: loaded into EtcdSettings; each mistake one line naming file, [etcd], key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kms.config import load_config
from kms.errors import ConfigError

CHAIN = """
[[chain]]
id = "osmosis-1"
key_format = { type = "hex" }
state_file = "state.json"
"""


def write(tmp_path: Path, etcd: str) -> Path:
    path = tmp_path / "tmkms.toml"
    path.write_text(CHAIN + "\n[etcd]\n" + etcd)
    return path


def test_a_full_section_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]\n'
        'prefix = "/kms/"\nhost = "kms-a"\ntimeout = 2\n'
        'ca_file = "ca.pem"\ncert_file = "client.pem"\nkey_file = "client.key"\n'
        'username = "tmkms"\npassword_file = "etcd-password"\n',
    )
    etcd = load_config(path).etcd
    assert etcd is not None
    assert etcd.endpoints == ("https://10.0.0.1:2379", "https://10.0.0.2:2379")
    assert (etcd.prefix, etcd.host, etcd.timeout, etcd.username) == ("/kms/", "kms-a", 2.0, "tmkms")
    assert etcd.ca_file == Path.cwd() / "ca.pem"
    assert etcd.password_file == Path.cwd() / "etcd-password"


def test_defaults(tmp_path: Path) -> None:
    etcd = load_config(write(tmp_path, 'endpoints = ["http://127.0.0.1:2379"]\n')).etcd
    assert etcd is not None
    assert (etcd.prefix, etcd.timeout, etcd.tls) == ("/tmkms/", 1.0, False)
    assert etcd.host  # this machine's host name


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("", "endpoints", "missing required key"),
        ('endpoints = ["ftp://x:1"]\n', "endpoints", "expected http:// or https://"),
        ('endpoints = ["http://a:1"]\ntimeout = 0\n', "timeout", "out of range"),
        ('endpoints = ["http://a:1"]\ntimeout = "1"\n', "timeout", "a number of seconds"),
        ('endpoints = ["http://a:1"]\nusername = "kms"\n', "username", "go together"),
        ('endpoints = ["http://a:1"]\nca_file = "ca.pem"\n', "endpoints", "must be https://"),
        ('endpoints = ["http://a:1"]\npassword = "x"\n', "password", "unknown key"),
    ],
)
def test_mistakes_name_file_section_and_key(
    tmp_path: Path, body: str, key: str, problem: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f'{path}: [etcd]: key "{key}": '), message
    assert problem in message
    assert "\n" not in message
