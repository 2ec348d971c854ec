"""deploy/: Prometheus config and alert rules pass promtool, the dashboard and
the alerts name only metrics jobboard exports, the units and the compose file
say what operators rely on, and a real Prometheus scrapes a live
``jobboard exporter``.

promtool and prometheus come from Debian's ``prometheus`` package: missing,
these tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import configparser
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from jobboard.board import Board
from jobboard.metrics import BoardCollector, Metrics, ScheduleCollector
from jobboard.testing.zookeeper import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "jobboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
METRIC_NAME = re.compile(r"\bjobboard_[a-zA-Z0-9_]*")
# Exported for debugging a scrape, not worth a panel; and the posts of one
# process (posters are seldom scraped: the dashboard plots the board's count).
NOT_ON_DASHBOARD = {"jobboard_board_scrape_errors_total",
                    "jobboard_board_scrape_duration_seconds",
                    "jobboard_jobs_posted_total"}


def require(binary: str) -> str:
    """The path of ``binary``; skip without it, except under CI=true."""
    path = shutil.which(binary) or (f"/usr/bin/{binary}"
                                    if os.path.exists(f"/usr/bin/{binary}") else None)
    if path is None:
        message = f"{binary} is not installed (Debian package 'prometheus')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must install it (.ci/run)")
        pytest.skip(message)
    return path


def exported_names() -> set[str]:
    """Every sample name a conductor (Metrics) and the exporter
    (BoardCollector, ScheduleCollector) can expose, suffixes included."""
    registry = CollectorRegistry()
    Metrics(registry)
    families = list(registry.collect())
    families += list(BoardCollector(board=None).describe())
    families += list(ScheduleCollector(schedules=None).describe())
    names = set()
    for family in families:
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in doc["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def alert_rules() -> dict[str, str]:
    """alert name -> expr (alerts.yml keeps each expr on one line)."""
    rules, name = {}, None
    for line in ALERTS.read_text().splitlines():
        if m := re.match(r"\s*- alert:\s*(\S+)", line):
            name = m.group(1)
        elif (m := re.match(r"\s*expr:\s*(.+)$", line)) and name:
            rules[name] = m.group(1).strip()
    return rules


# -- static checks ------------------------------------------------------------------

def test_the_known_metric_names():
    names = exported_names()
    for expected in ("jobboard_jobs_posted_total", "jobboard_jobs_dead_lettered_total",
                     "jobboard_claim_conflicts_total", "jobboard_logbook_fenced_writes_total",
                     "jobboard_zookeeper_session_losses_total",
                     "jobboard_job_duration_seconds_bucket",
                     "jobboard_task_duration_seconds_count",
                     "jobboard_claim_latency_seconds_sum", "jobboard_lock_wait_seconds_bucket",
                     "jobboard_logbook_write_seconds_bucket", "jobboard_jobs_in_flight",
                     "jobboard_zookeeper_connected", "jobboard_conductor_info",
                     "jobboard_board_waiting_jobs", "jobboard_board_delayed_jobs",
                     "jobboard_board_claimed_jobs", "jobboard_board_dead_jobs",
                     "jobboard_board_oldest_waiting_age_seconds", "jobboard_board_conductors",
                     "jobboard_board_scrape_errors_total", "jobboard_board_up",
                     "jobboard_board_jobs_posted_total", "jobboard_webhook_deliveries_total",
                     "jobboard_webhook_failures_total", "jobboard_webhook_dropped_total"):
        assert expected in names
    for name in names:   # conventions: counters end in _total, no doubled suffix
        assert not name.endswith("_total_total") and "__" not in name


def test_promtool_accepts_config_and_rules():
    promtool = require("promtool")
    for args in (["check", "config", str(PROMETHEUS_YML)], ["check", "rules", str(ALERTS)]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=60)
    assert f"{len(alert_rules())} rules found" in result.stdout


def test_dashboard_names_only_exported_metrics_and_shows_them_all():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "jobboard" and doc["schemaVersion"] >= 30
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["type"] == "row" or panel.get("targets"), panel["title"]
    exported = exported_names()
    used = {name for expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    assert used and used <= exported, f"unknown metrics on the dashboard: {used - exported}"
    # Each metric family is on some panel (histograms through any suffix).
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    missing = {n for n in exported - NOT_ON_DASHBOARD
               if n not in used and re.sub(r"_(bucket|sum|count)$", "", n) not in base}
    assert not missing, f"exported but on no panel: {missing}"


def test_alerts_cover_the_failure_modes_with_exported_metrics():
    rules = alert_rules()
    exported = exported_names()
    for name, expr in rules.items():
        used = set(METRIC_NAME.findall(expr))
        assert used <= exported, f"{name} names unknown metrics: {used - exported}"
    wanted = {"jobboard_board_conductors": "JobboardNoConductorAlive",
              "jobboard_board_oldest_waiting_age_seconds": "JobboardJobsWaitingTooLong",
              "jobboard_jobs_reclaimed_total": "JobboardReclaimStorm",
              "jobboard_logbook_fenced_writes_total": "JobboardFencedWrites",
              "jobboard_zookeeper_session_losses_total": "JobboardZooKeeperSessionLost",
              "jobboard_webhook_dropped_total": "JobboardWebhookDropping"}
    for metric, alert in wanted.items():
        assert metric in rules[alert]
    assert "rate(jobboard_jobs_reclaimed_total" in rules["JobboardReclaimStorm"]
    docs = (DEPLOY.parent / "docs" / "dashboards.md").read_text()
    for alert in rules:
        assert alert in docs, f"docs/dashboards.md does not explain {alert}"


def test_prometheus_scrapes_conductors_and_the_exporter():
    text = PROMETHEUS_YML.read_text()
    assert re.search(r"job_name:\s*jobboard-conductor", text)
    assert re.search(r"job_name:\s*jobboard-exporter", text)
    assert ":9464" in text and ":9465" in text
    assert re.search(r"rule_files:\s*\n\s*- alerts\.yml", text)


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def test_systemd_units():
    conductor = unit("jobboard-conductor@.service")["Service"]
    assert conductor["KillSignal"] == "SIGTERM"
    assert conductor["Restart"] == "on-failure"
    assert "/etc/jobboard/jobboard.env" in (DEPLOY / "systemd" /
                                            "jobboard-conductor@.service").read_text()
    assert "--name %i" in conductor["ExecStart"]
    assert "--metrics-port" in conductor["ExecStart"]
    from jobboard.conductor import Conductor
    import inspect
    grace = inspect.signature(Conductor).parameters["grace"].default
    assert float(conductor["TimeoutStopSec"]) > grace
    exporter = unit("jobboard-exporter.service")["Service"]
    assert " exporter " in exporter["ExecStart"] + " "
    assert exporter["KillSignal"] == "SIGTERM" and exporter["Restart"] == "on-failure"
    env = (DEPLOY / "systemd" / "jobboard.env").read_text()
    assert re.search(r"^JOBBOARD_ZK=", env, re.M) and re.search(r"^JOBBOARD_LOGBOOK=", env, re.M)


def test_zookeeper_ensemble_config():
    cfg = dict(line.split("=", 1) for line in (DEPLOY / "zookeeper" / "zoo.cfg").read_text()
               .splitlines() if line.strip() and not line.startswith("#"))
    assert {k for k in cfg if k.startswith("server.")} == {"server.1", "server.2", "server.3"}
    assert cfg["clientPort"] == "2181" and "ruok" in cfg["4lw.commands.whitelist"]
    assert "myid" in (DEPLOY / "README.md").read_text()


def test_compose_file_has_the_whole_fleet():
    text = (DEPLOY / "docker-compose.yml").read_text()
    services = set(re.findall(r"^  ([a-z0-9-]+):\s*$", text.split("\nservices:\n", 1)[1]
                              .split("\nvolumes:\n", 1)[0], re.M))
    assert {"zk1", "zk2", "zk3", "postgres", "conductor-1", "conductor-2", "exporter",
            "prometheus", "grafana"} <= services
    assert "image: zookeeper:3.8" in text and "image: postgres:15" in text
    assert "./grafana/provisioning:/etc/grafana/provisioning" in text
    datasource = (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "url: http://prometheus:9090" in datasource
    provider = (DEPLOY / "grafana/provisioning/dashboards/jobboard.yml").read_text()
    mount = re.search(r"\./grafana/dashboards:(\S+?):ro", text).group(1)
    assert f"path: {mount}" in provider


# -- a real Prometheus against a live exporter ---------------------------------------

def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def start_exporter(zk_hosts: str):
    """``jobboard exporter --port 0`` in a subprocess; returns it, its port, a
    queue of its stderr lines and the thread filling the queue."""
    env = {**os.environ, "JOBBOARD_ZK": zk_hosts, "JOBBOARD_ROOT": "/jobboard"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from jobboard.cli import main; main()", "exporter",
         "--port", "0", "--addr", "127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr],
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if m := re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line):
            return proc, int(m.group(1)), lines, reader
    proc.kill()
    pytest.fail("the exporter did not say where it serves within 30 s")


@pytest.mark.slow
def test_prometheus_scrapes_a_live_exporter(zk_hosts, tmp_path):
    prometheus = require("prometheus")
    with Board.connect(zk_hosts, root="/jobboard") as board:
        board.post_many([{"factory": "tests.flows:noop"} for _ in range(3)])
        board.post("tests.flows:noop", priority=7)
    exporter, port, lines, reader = start_exporter(zk_hosts)
    try:
        shutil.copy(ALERTS, tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files:\n  - alerts.yml\n"
            "scrape_configs:\n  - job_name: jobboard-exporter\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
        web = free_port()
        server = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{web}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
        try:
            api = f"http://127.0.0.1:{web}/api/v1"
            query = urllib.parse.quote("jobboard_board_waiting_jobs")
            found, deadline = {}, time.monotonic() + 30
            while time.monotonic() < deadline and not found:
                assert server.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                try:
                    result = http_json(f"{api}/query?query={query}")["data"]["result"]
                    found = {r["metric"]["priority"]: float(r["value"][1]) for r in result}
                except OSError:
                    pass       # not listening yet
                if not found:
                    time.sleep(0.2)   # polling an HTTP API under a deadline
            assert found == {"0": 3.0, "7": 1.0}, (tmp_path / "prometheus.log").read_text()[-2000:]
            groups = http_json(f"{api}/rules")["data"]["groups"]
            loaded = {r["name"] for g in groups for r in g["rules"]}
            assert set(alert_rules()) <= loaded
            health = {r["name"]: r["health"] for g in groups for r in g["rules"]}
            assert "err" not in health.values(), health
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        exporter.send_signal(signal.SIGTERM)
        code = exporter.wait(timeout=30)
        reader.join(timeout=10)
    assert code == 0
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert any("exporter stopped" in line for line in rest), rest
