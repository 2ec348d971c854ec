"""The config file's keys and their checks, derived from the click commands.

Every long option of a command is a key of its ``[command]`` table (dashes
as underscores), and a top-level key when some command has it; its value
must have the option's TOML type (no ``"8"`` for an integer), then click's
own conversion applies ranges and choices. :mod:`jobboard.config` does the
checking; this module only describes the commands to it.

How it fails: it does not; the checks it builds raise ``TypeError`` or
``ValueError`` with a reason, which :mod:`jobboard.config` turns into a
:class:`~jobboard.errors.ConfigError` naming the key and the file.
"""

from __future__ import annotations

from typing import Any

import click

from jobboard import config

__all__ = ["schema", "setting_check"]


def setting_check(param: click.Option) -> config.Check:
    """How a config-file value for ``param`` is checked."""
    kind = param.type
    if param.is_flag or isinstance(kind, click.types.BoolParamType):
        expected: tuple[type, ...] = (bool,)
    elif isinstance(kind, (click.types.IntParamType, click.IntRange)):
        expected = (int,)
    elif isinstance(kind, (click.types.FloatParamType, click.FloatRange)):
        expected = (int, float)
    else:
        expected = (str,)
    names = "a number" if float in expected else \
        {bool: "true/false", int: "an integer", str: "a string"}[expected[0]]

    def one(value: Any) -> Any:
        if not isinstance(value, expected) or (bool not in expected and isinstance(value, bool)):
            raise TypeError(f"must be {names}, not {type(value).__name__} {value!r:.40}")
        if param.is_flag:
            return value
        try:
            return kind.convert(value, param, None)
        except click.BadParameter as exc:
            raise ValueError(f"has a bad value: {exc.message}") from None

    def check(value: Any) -> Any:
        if not param.multiple:
            return one(value)
        if not isinstance(value, list):
            raise TypeError(f"must be a list, not {type(value).__name__}")
        return [one(item) for item in value]

    return check


def schema(command: click.Command) -> config.CommandSchema:
    """The config keys of a command (long option names, with underscores) or
    of a group's subcommands."""
    if isinstance(command, click.Group):
        return config.CommandSchema(commands={name: schema(sub)
                                              for name, sub in command.commands.items()})
    settings = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden or param.name is None:
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                settings[opt[2:].replace("-", "_")] = config.Setting(param.name,
                                                                     setting_check(param))
    return config.CommandSchema(settings=settings)
