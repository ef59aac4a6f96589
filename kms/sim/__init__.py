"""Simulators that stand in for what a KMS talks to: a CometBFT node, a YubiHSM 2, an etcd
cluster on loopback. They back `tmkms demo`, `tmkms demo --ha` and `tmkms yubihsm simulator`,
and the tests and benchmarks drive the real KMS against them."""
