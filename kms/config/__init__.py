"""tmkms.toml: the configuration model, its strict loader and the `tmkms init` template.

>>> config = load_config(config_path_from(None))   # ./tmkms.toml or $TMKMS_CONFIG_FILE
>>> config.chain("osmosis-1").key_format.consensus_key_prefix
'osmovalconspub'

Unknown keys, wrong types and inconsistent sections are ConfigErrors whose one-line message
names the file, the section and the key (see :mod:`kms.config.loader`).
"""

from __future__ import annotations

from kms.config.loader import (
    CONFIG_ENV_VAR,
    CONFIG_FILE_NAME,
    config_from_dict,
    config_path_from,
    load_config,
)
from kms.config.model import (
    ChainConfig,
    KeyFormat,
    KmsConfig,
    MetricsConfig,
    SoftsignConfig,
    StateHook,
    ValidatorConfig,
    YubihsmAdapter,
    YubihsmAuth,
    YubihsmConfig,
    YubihsmKeyConfig,
)

__all__ = [
    "CONFIG_ENV_VAR",
    "CONFIG_FILE_NAME",
    "ChainConfig",
    "KeyFormat",
    "KmsConfig",
    "MetricsConfig",
    "SoftsignConfig",
    "StateHook",
    "ValidatorConfig",
    "YubihsmAdapter",
    "YubihsmAuth",
    "YubihsmConfig",
    "YubihsmKeyConfig",
    "config_from_dict",
    "config_path_from",
    "load_config",
]
