"""Helpers shared by the tests: real processes and real parts started for them."""
