"""Settings precedence: flag > environment > config file > default."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from jobboard import config
from jobboard.board import Board
from jobboard.cli import main
from jobboard.errors import ConfigError


def test_config_file_then_environment_then_flag(zk_hosts, tmp_path, monkeypatch):
    with Board.connect(zk_hosts, root="/from-file") as board:
        in_file = board.post("tests.flows:noop").uuid
    with Board.connect(zk_hosts, root="/from-env") as board:
        in_env = board.post("tests.flows:noop").uuid
    with Board.connect(zk_hosts, root="/from-flag") as board:
        in_flag = board.post("tests.flows:noop").uuid
    (tmp_path / "jobboard.toml").write_text(f'zk = "{zk_hosts}"\nroot = "/from-file"\n')
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def listed(*args: str, env: dict | None = None) -> list[str]:
        result = runner.invoke(main, ["jobs", "--json", *args], env=env or {},
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return [j["uuid"] for j in json.loads(result.output)["jobs"]]

    assert listed(env={"JOBBOARD_ROOT": None, "JOBBOARD_ZK": None}) == [in_file]
    assert listed(env={"JOBBOARD_ROOT": "/from-env"}) == [in_env]
    assert listed("--root", "/from-flag", env={"JOBBOARD_ROOT": "/from-env"}) == [in_flag]


def test_bad_config_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("zk = [unterminated")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load_config_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        config.load_config_file(tmp_path / "missing.toml")
    result = CliRunner().invoke(main, ["--config", str(bad), "jobs"])
    assert result.exit_code == 1 and "not valid TOML" in result.output
    with pytest.raises(ConfigError):
        config.parse_auth("no-colon")
    assert config.parse_auth("svc:pw") == ("svc", "pw")


# ---- config validation -----------------------------------------------------------

def _int(value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"must be an integer, not {type(value).__name__}")
    return value


def _str(value):
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {type(value).__name__}")
    return value


SCHEMA = config.CommandSchema(commands={
    "jobs": config.CommandSchema(settings={"zk": config.Setting("zk", _str),
                                           "json": config.Setting("as_json", bool)}),
    "conductor": config.CommandSchema(settings={
        "zk": config.Setting("zk", _str),
        "metrics_port": config.Setting("metrics_port", _int)}),
    "logbook": config.CommandSchema(commands={
        "prune": config.CommandSchema(settings={"zk": config.Setting("zk", _str),
                                                "older_than": config.Setting("days", _int)}),
    }),
})


def test_default_map_maps_long_names_to_parameters_and_tables_override():
    settings = {"zk": "a:1", "metrics_port": 9400,
                "jobs": {"json": True},
                "logbook": {"zk": "b:2", "prune": {"older_than": 30}}}
    assert config.default_map(settings, SCHEMA) == {
        "jobs": {"zk": "a:1", "as_json": True},
        "conductor": {"zk": "a:1", "metrics_port": 9400},
        "logbook": {"prune": {"zk": "b:2", "days": 30}},
    }


@pytest.mark.parametrize("settings, says", [
    ({"zookeeper": "a:1"}, "unknown key 'zookeeper'.*known: json, metrics_port"),
    ({"zks": "a:1"}, "unknown key 'zks'.*did you mean 'zk'"),
    ({"jobs": {"metrics_port": 1}}, "unknown key 'jobs.metrics_port'"),
    ({"nosuch": {"zk": "a:1"}}, r"unknown key '\[nosuch\]'"),
    ({"conductor": {"metrics_port": "9400"}}, "conductor.metrics_port must be an integer, not str"),
    ({"zk": 2181}, "zk must be a string, not int"),
    ({"logbook": {"prune": {"older_than": 1.5}}}, "logbook.prune.older_than must be an integer"),
    ({"logbook": {"prune": {"nested": {}}}}, r"unknown key '\[logbook.prune.nested\]'"),
])
def test_default_map_refuses_unknown_keys_and_wrong_types(settings, says):
    with pytest.raises(ConfigError, match=says) as caught:
        config.default_map(settings, SCHEMA, source="jobboard.toml")
    assert str(caught.value).startswith("jobboard.toml: ")
    assert "\n" not in str(caught.value)


def test_unreadable_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load_config_file(tmp_path)          # a directory
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"zk = '\xff'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load_config_file(binary)


def test_cli_config_keys_come_from_the_commands(tmp_path, monkeypatch):
    """Every long option of every command is a config key, and only those."""
    from jobboard.cli.settings import schema as _schema

    schema = _schema(main)
    assert set(schema.commands) == set(main.commands)
    conductor = schema.commands["conductor"].settings
    assert {"zk", "root", "logbook", "auth", "auth_file", "metrics_port", "allow",
            "concurrency"} <= set(conductor)
    assert conductor["metrics_port"].param == "metrics_port"
    assert schema.commands["jobs"].settings["json"].param == "as_json"
    assert schema.commands["logbook"].commands["prune"].settings["older_than"].param == "days"
    assert conductor["allow"].check(["a", "b"]) == ["a", "b"]
    with pytest.raises(TypeError, match="must be a list"):
        conductor["allow"].check("a")
    with pytest.raises(ValueError, match="bad value"):
        conductor["concurrency"].check(0)
    with pytest.raises(TypeError, match="integer"):
        conductor["concurrency"].check(True)


def test_config_file_applies_to_group_subcommands(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/book.db"
    (tmp_path / "jobboard.toml").write_text(f'logbook = "{url}"\n')
    monkeypatch.chdir(tmp_path)
    created = CliRunner().invoke(main, ["logbook", "upgrade"], env={"JOBBOARD_LOGBOOK": None},
                                 catch_exceptions=False)
    assert created.exit_code == 0, created.output
    assert (tmp_path / "book.db").exists()
    result = CliRunner().invoke(main, ["logbook", "list", "--json"],
                                env={"JOBBOARD_LOGBOOK": None}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"logbooks": [], "limit": 100}


# ---- credentials from a file --------------------------------------------------------

def test_read_auth_file(tmp_path):
    path = tmp_path / "auth"
    for content in ("svc:pw:with:colons\n", "svc:pw:with:colons", "svc:pw:with:colons\r\n"):
        path.write_text(content)
        path.chmod(0o600)
        warnings: list[str] = []
        assert config.read_auth_file(path, warn=warnings.append) == ("svc", "pw:with:colons")
        assert warnings == []
    path.chmod(0o640)
    warnings = []
    assert config.read_auth_file(path, warn=warnings.append) == ("svc", "pw:with:colons")
    assert len(warnings) == 1 and "chmod 600" in warnings[0] and "0640" in warnings[0]
    assert config.read_auth_file(path) == ("svc", "pw:with:colons")     # no warn: quiet


@pytest.mark.parametrize("content", ["", "\n", "svc\n", ":pw\n", "svc:pw\nmore\n",
                                     "svc:pw\n\n"])
def test_badly_formed_auth_files_are_refused_without_echoing_them(tmp_path, content):
    path = tmp_path / "auth"
    path.write_text(content)
    with pytest.raises(ConfigError, match="must hold one line USER:PASSWORD") as caught:
        config.read_auth_file(path)
    assert "pw" not in str(caught.value).replace(str(path), "")


def test_missing_auth_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.read_auth_file(tmp_path / "missing")
    with pytest.raises(ConfigError, match="directory"):
        config.read_auth_file(tmp_path)


def _conductor_params(args: list[str], settings: dict) -> dict:
    """The parameters `jobboard conductor` would run with, given its flags and
    a config file's settings (the environment from the test)."""
    import click

    from jobboard.cli.daemon import conductor
    from jobboard.cli.settings import schema as _schema

    parent = click.Context(main, info_name="jobboard",
                           default_map=config.default_map(settings, _schema(main)))
    with parent:
        return conductor.make_context("conductor", ["--allow", "x", *args],
                                      parent=parent).params


def test_conductor_execution_settings_flag_env_config_default(monkeypatch):
    for key in ("JOBBOARD_EXECUTOR", "JOBBOARD_TASK_TIMEOUT", "JOBBOARD_STOP_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    defaults = _conductor_params([], {})
    assert (defaults["executor"], defaults["task_timeout"], defaults["stop_timeout"]) == \
        ("thread", None, 30.0)

    from_file = {"conductor": {"executor": "process", "task_timeout": 600,
                               "stop_timeout": 5.5}}
    params = _conductor_params([], from_file)
    assert (params["executor"], params["task_timeout"], params["stop_timeout"]) == \
        ("process", 600.0, 5.5)

    monkeypatch.setenv("JOBBOARD_STOP_TIMEOUT", "7")
    monkeypatch.setenv("JOBBOARD_EXECUTOR", "thread")
    params = _conductor_params([], from_file)
    assert (params["executor"], params["stop_timeout"]) == ("thread", 7.0)
    assert params["task_timeout"] == 600.0

    params = _conductor_params(["--stop-timeout", "9", "--task-timeout", "1.5"], from_file)
    assert (params["stop_timeout"], params["task_timeout"]) == (9.0, 1.5)


@pytest.mark.parametrize("settings, says", [
    ({"conductor": {"executor": "fork"}}, "conductor.executor has a bad value"),
    ({"conductor": {"task_timeout": 0}}, "conductor.task_timeout has a bad value"),
    ({"conductor": {"stop_timeout": -1}}, "conductor.stop_timeout has a bad value"),
    ({"conductor": {"stop_timeout": "30"}}, "conductor.stop_timeout must be a number"),
    ({"conductor": {"task_timeout": float("inf")}}, "conductor.task_timeout has a bad value"),
    ({"conductor": {"task_timeout": True}}, "conductor.task_timeout must be a number"),
])
def test_conductor_execution_settings_are_checked_in_the_config_file(settings, says):
    from jobboard.cli.settings import schema as _schema

    with pytest.raises(ConfigError, match=says) as caught:
        config.default_map(settings, _schema(main), source="jobboard.toml")
    assert "\n" not in str(caught.value)
