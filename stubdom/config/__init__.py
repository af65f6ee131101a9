"""Configuration: the YAML schema, its loader and the per-domain policy.

The default configuration is embedded as package data: stubdom/config/xen.yaml
is a link to configs/xen.yaml in the source tree.

    config = load_config("xen.yaml")      # or None: the embedded default
    config.policy_for(domid).limits       # a stubdom.mediator.DomainLimits
    config.tee                            # a TeeConfig: the modelled OP-TEE's CFG_*

Every problem in a file is reported at once, as ``file:line: key.path:
message`` (ConfigError.problems).  See docs/config.md.
"""

from .errors import BadTeeConfig as BadTeeConfig
from .errors import ConfigError as ConfigError
from .loader import EMBEDDED_NAME as EMBEDDED_NAME
from .loader import load_config as load_config
from .loader import parse_config as parse_config
from .loader import runtime_dir_of as runtime_dir_of
from .model import LOG_LEVELS as LOG_LEVELS
from .model import PLACEMENTS as PLACEMENTS
from .model import Config as Config
from .model import DomainConfig as DomainConfig
from .model import DomainPolicy as DomainPolicy
from .model import MediatorConfig as MediatorConfig
from .model import PlatformConfig as PlatformConfig
from .model import RateLimit as RateLimit
from .model import StaticShmConfig as StaticShmConfig
from .tee import TeeConfig as TeeConfig

__all__ = [
    "BadTeeConfig",
    "Config",
    "ConfigError",
    "DomainConfig",
    "DomainPolicy",
    "EMBEDDED_NAME",
    "LOG_LEVELS",
    "MediatorConfig",
    "PLACEMENTS",
    "PlatformConfig",
    "RateLimit",
    "StaticShmConfig",
    "TeeConfig",
    "load_config",
    "parse_config",
    "runtime_dir_of",
]
