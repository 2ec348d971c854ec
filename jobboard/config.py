"""Settings from flags, environment and a config file.

Precedence: command-line flag > ``JOBBOARD_*`` environment variable > config
file > default. The config file is TOML (``--config`` / ``JOBBOARD_CONFIG``,
else ``./jobboard.toml`` when present); its top-level keys are the long flag
names with dashes or underscores (``zk = "10.0.0.1:2181"``,
``metrics_port = 9400``), and a table per subcommand
(``[conductor] concurrency = 8``) overrides them for that command (a table per
subcommand of a group: ``[logbook.prune] older_than = 30``). Unknown keys and
values of the wrong type are refused with a :class:`ConfigError` naming the
key; the CLI derives the known keys and their types from its commands.

The default logbook is the SQLite file ``$XDG_STATE_HOME/jobboard/logbook.db``
(``~/.local/state/jobboard/logbook.db`` when that variable is unset), the
same from every directory (:func:`default_logbook_url`).

Secrets: ZooKeeper credentials come from ``--auth-file``/``JOBBOARD_AUTH_FILE``
(a file holding ``USER:PASSWORD``), ``JOBBOARD_AUTH``, or ``--auth`` (which
every user of the machine can read in ``ps``).

Only this module and the CLI read the environment; library classes take
explicit arguments.
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from jobboard.errors import ConfigError

DEFAULT_ZK = "127.0.0.1:2181"
DEFAULT_ROOT = "/jobboard"
DEFAULT_CONFIG_FILE = "jobboard.toml"
#: The default logbook as the help text shows it (see :func:`default_logbook_url`).
DEFAULT_LOGBOOK_HELP = "sqlite:///$XDG_STATE_HOME/jobboard/logbook.db"


def state_dir() -> Path:
    """Where jobboard keeps its local state (the default SQLite logbook, a
    development ZooKeeper's data): ``$XDG_STATE_HOME/jobboard``, else
    ``~/.local/state/jobboard`` (the XDG base directory default). Not created
    here."""
    base = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec: a relative value is invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "jobboard"


def default_logbook_url() -> str:
    """The logbook when none is configured: a SQLite file at a fixed place,
    ``{state_dir}/logbook.db``, whatever the current directory."""
    return f"sqlite:///{state_dir() / 'logbook.db'}"


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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: not UTF-8 text") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    return _normalise(data)


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    return {key.replace("-", "_"): _normalise(value) if isinstance(value, dict) else value
            for key, value in data.items()}


# -- validating a config file against the commands ------------------------------

#: Checks a value from the config file and returns the value to use; raises
#: ValueError or TypeError with a reason ("must be an integer, not str").
Check = Callable[[Any], Any]


@dataclass(frozen=True)
class Setting:
    """One key a config file may set: the parameter it fills and its check."""

    param: str
    check: Check


@dataclass(frozen=True)
class CommandSchema:
    """The keys a command accepts (``settings``, by config key: the long flag
    name with underscores) and, for a group, its subcommands."""

    settings: Mapping[str, Setting] = field(default_factory=dict)
    commands: Mapping[str, "CommandSchema"] = field(default_factory=dict)

    def all_keys(self) -> set[str]:
        keys = set(self.settings)
        for sub in self.commands.values():
            keys |= sub.all_keys()
        return keys


def default_map(config: dict[str, Any], schema: CommandSchema, *,
                source: Path | str = "config file") -> dict[str, Any]:
    """Check a config file against the commands and turn it into click's
    ``default_map``: top-level keys apply to every command that has the
    option, a ``[command]`` table to that command only (``[group.command]``
    for a group's subcommand).

    Raises:
        ConfigError: a key no command knows, a table that is not a command, or
            a value of the wrong type or out of range; the message names it.
    """
    return _group_map(config, {}, schema, source, where="")


def _group_map(table: dict[str, Any], inherited: dict[str, Any], schema: CommandSchema,
               source: Path | str, where: str) -> dict[str, Any]:
    known = schema.all_keys()
    scalars = dict(inherited)
    for key, value in table.items():
        if isinstance(value, dict):
            if key not in schema.commands:
                raise _unknown(source, f"[{where}{key}]", key, schema.commands, "a command table")
            continue
        if key not in known:
            raise _unknown(source, where + key, key, known, "a setting")
        scalars[key] = value
    out: dict[str, Any] = {}
    for name, sub in schema.commands.items():
        sub_table = table.get(name, {})
        if not isinstance(sub_table, dict):
            # a scalar named like a command: only possible when a command has
            # an option of that name (e.g. --logbook); it was taken as a setting.
            sub_table = {}
        if sub.commands:
            out[name] = _group_map(sub_table, scalars, sub, source, f"{where}{name}.")
        else:
            out[name] = _command_map(sub_table, scalars, sub, source, f"{where}{name}.")
    return out


def _command_map(table: dict[str, Any], inherited: dict[str, Any], schema: CommandSchema,
                 source: Path | str, where: str) -> dict[str, Any]:
    for key, value in table.items():
        if isinstance(value, dict) or key not in schema.settings:
            label = f"[{where}{key}]" if isinstance(value, dict) else where + key
            raise _unknown(source, label, key, schema.settings, "a setting of this command")
    out: dict[str, Any] = {}
    for key, value in {**inherited, **table}.items():
        setting = schema.settings.get(key)
        if setting is None:
            continue     # a top-level key meant for other commands
        label = where + key if key in table else key
        try:
            out[setting.param] = setting.check(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {label} {exc}") from None
    return out


def _unknown(source: Path | str, label: str, key: str, known: Any, what: str) -> ConfigError:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
    return ConfigError(f"{source}: unknown key {label!r} (not {what}){hint}")


# -- credentials ----------------------------------------------------------------

AUTH_FORM = "USER:PASSWORD"
_MAX_PRIVATE_FILE = 4096


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``user:password`` -> digest credentials for ZooKeeper ACLs."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise ConfigError("--auth / JOBBOARD_AUTH must look like USER:PASSWORD")
    return user, password


def read_private_file(path: str | os.PathLike[str], what: str, *, missing_hint: str = "",
                      limit: int = _MAX_PRIVATE_FILE) -> tuple[bytes, os.stat_result]:
    """The bytes of a small file holding a credential, without one trailing
    newline (``\n`` or ``\r\n``), and the file's status (mode, owner) for
    the caller to judge. A FIFO or device put there is refused, never waited on.

    Args:
        path: the file.
        what: how messages name it, e.g. ``"auth file /etc/jb/auth"``.
        missing_hint: added to the message of a missing file (where to
            name another).
        limit: the largest size accepted.

    Raises:
        ConfigError: the file is missing, not a regular file, unreadable or
            larger than ``limit`` bytes. The message never contains the
            file's content.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            status = os.fstat(fd)
            mode = status.st_mode
            if stat.S_ISDIR(mode):
                raise ConfigError(f"{what} is a directory, not a file")
            if not stat.S_ISREG(mode):
                raise ConfigError(f"{what} is not a regular file")
            raw = os.read(fd, limit + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist{missing_hint}") from None
    except PermissionError:
        raise ConfigError(f"{what} is not readable by this user") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > limit:
        raise ConfigError(f"{what} is larger than {limit} bytes")
    if raw.endswith(b"\n"):
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    return raw, status


def open_to_others(mode: int, *, readable_only: bool = False) -> bool:
    """Whether a file of ``mode`` is open to group or others (only reading,
    with ``readable_only``)."""
    bits = stat.S_IRGRP | stat.S_IROTH if readable_only else stat.S_IRWXG | stat.S_IRWXO
    return bool(mode & bits)


def read_auth_file(path: str | os.PathLike[str], *,
                   warn: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Credentials from a file holding one line ``USER:PASSWORD`` (a trailing
    newline is ignored), so they stay out of ``ps`` and shell history.

    Args:
        path: the file.
        warn: called with a one-line message when the file is readable by
            group or others (as ssh does for keys; not refused).

    Raises:
        ConfigError: the file is missing, unreadable or not one ``USER:PASSWORD``
            line. The message never contains the file's content.
    """
    bad = ConfigError(f"auth file {path} must hold one line {AUTH_FORM}")
    raw, status = read_private_file(path, f"auth file {path}",
                                    missing_hint=" (--auth-file / JOBBOARD_AUTH_FILE)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad from None
    user, sep, password = text.partition(":")
    if not sep or not user or any(c in text for c in "\r\n"):
        raise bad
    if warn is not None and open_to_others(status.st_mode, readable_only=True):
        warn(f"auth file {path} is readable by group or others (mode "
             f"{stat.S_IMODE(status.st_mode):04o}); keep it private: chmod 600 {path}")
    return user, password
