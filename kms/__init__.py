"""A trio-based key management service for CometBFT validators, compatible with tmkms."""

__version__ = "0.1.0"
