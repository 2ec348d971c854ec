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
