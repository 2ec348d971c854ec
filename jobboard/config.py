"""Settings from flags, environment and a config file.

Precedence: command-line flag > ``JOBBOARD_*`` environment variable > config
file > default. The config file is TOML (``--config`` / ``JOBBOARD_CONFIG``,
else ``./jobboard.toml`` when present); its top-level keys are the long flag
names with dashes or underscores (``zk = "10.0.0.1:2181"``,
``metrics_port = 9400``), and a table per subcommand
(``[conductor] concurrency = 8``) overrides them for that command.

Only this module and the CLI read the environment; library classes take
explicit arguments.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from jobboard.errors import ConfigError

DEFAULT_ZK = "127.0.0.1:2181"
DEFAULT_ROOT = "/jobboard"
DEFAULT_LOGBOOK = "sqlite:///jobboard.db"
DEFAULT_CONFIG_FILE = "jobboard.toml"


def config_path(explicit: str | None = None) -> Path | None:
    path = explicit or os.environ.get("JOBBOARD_CONFIG")
    if path:
        return Path(path)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_config_file(path: Path | None) -> dict[str, Any]:
    """Read a TOML config file; a missing explicit file is an error."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return _normalise(data)


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    return {key.replace("-", "_"): _normalise(value) if isinstance(value, dict) else value
            for key, value in data.items()}


def click_default_map(config: dict[str, Any], commands: list[str]) -> dict[str, Any]:
    """Turn a config file into click's ``default_map``: global keys apply to
    every command, a ``[command]`` table to that command only."""
    globals_ = {k: v for k, v in config.items() if not isinstance(v, dict)}
    default_map: dict[str, Any] = dict(globals_)
    for name in commands:
        default_map[name] = {**globals_, **config.get(name, {})}
    return default_map


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` -> digest credentials for ZooKeeper ACLs."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise ConfigError("--auth must look like USER:PASSWORD")
    return user, password
