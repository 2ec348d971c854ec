"""Counting what a chaos run did and whether the fleet kept its promises.

:func:`collect` reads the board (every posted job's record), the logbook
(flow and atoms of each job), the ``executions`` table written by the tasks
of :mod:`jobboard.testing.chaos_flows`, the ``atom_writes`` audit (every
atom write that landed, with the logbook's token at that instant) and the
conductors' logs, and returns a :class:`ChaosReport`: counts the test asserts
on and prints.

Per (job, task), with the atom's result naming the execution it came from
(``exec_id``, and the token of the engine that ran it):

* ``fenced_writes_landed``: a SUCCESS write whose result came from an engine
  whose token was not the logbook's token when the write landed (a write
  from a fenced holder was accepted);
* ``acked_reruns``: the task ran again under a newer token after its SUCCESS
  had landed (a finished task re-run); ``success_rewrites``: SUCCESS landed
  for two different executions;
* ``same_holder_reruns``: one engine (token) ran the task twice;
* ``stale_results``: the final result is not from the newest token that ran
  the task; ``result_missing`` / ``result_unfinished``: it names no
  execution of the task, or one that never finished;
* superseded executions (an older token than the final result's) are the
  at-least-once re-runs the design allows, when a holder died or was paused
  before its result was saved: ``unacked_reruns`` if that execution
  finished, ``interrupted_reruns`` if it never did;
* ``finished_twice``: the raw count of (job, task) with two or more finished
  executions, whatever the cause.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from sqlalchemy import text as sql_text

from jobboard.board import Board
from jobboard.errors import JobNotFound, MalformedData
from jobboard.logbook import Logbook
from jobboard.serialization import loads
from jobboard.states import AtomState, FlowState, JobState
from jobboard.testing.chaos_flows import TASKS, executions_engine

LOG_PATTERNS = {
    "fenced_refusals": re.compile(r"fenced (take_over|save_flow|save_atom) on job"),
    "claims_lost": re.compile(r"claim lost; left to its new owner"),
    "malformed_reported": re.compile(r"skipping malformed znode"),
    "unexpected_errors": re.compile(r"unexpected error; abandoning it"),
    "tracebacks": re.compile(r"Traceback \(most recent call last\)"),
    "sessions_lost": re.compile(r"ZooKeeper session lost"),
    "could_not_finish": re.compile(r"could not finish on the board"),
}


@dataclass
class ChaosEvents:
    """What the chaos schedule did (filled in by the test's chaos thread)."""

    conductors_killed: int = 0
    conductors_started: int = 0
    zookeeper_restarts: int = 0
    leader_restarts: int = 0
    pauses: int = 0
    bad_inputs: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)


@dataclass
class ChaosReport:
    jobs_posted: int = 0
    jobs_complete: int = 0
    jobs_states: Counter = field(default_factory=Counter)
    lost: int = 0
    broken_job_state: str = ""
    broken_job_reason: str = ""
    executions: int = 0
    finished_twice: int = 0
    interrupted_reruns: int = 0
    unacked_reruns: int = 0
    acked_reruns: int = 0
    success_rewrites: int = 0
    fenced_writes_landed: int = 0
    success_writes: int = 0
    same_holder_reruns: int = 0
    stale_results: int = 0
    result_missing: int = 0
    result_unfinished: int = 0
    atoms_not_success: int = 0
    board_result_mismatch: int = 0
    owner_mismatch: int = 0
    tokens_unknown: int = 0
    reclaims: int = 0
    reclaimed_events: int = 0
    log_counts: Counter = field(default_factory=Counter)
    garbage_unreported: list[str] = field(default_factory=list)
    traceback_sites: Counter = field(default_factory=Counter)
    events: ChaosEvents = field(default_factory=ChaosEvents)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)

    def render(self) -> str:
        e = self.events
        rows = [
            ("jobs posted", self.jobs_posted),
            ("jobs complete", self.jobs_complete),
            ("job states", dict(self.jobs_states)),
            ("jobs lost", self.lost),
            ("broken job", f"{self.broken_job_state}: {self.broken_job_reason}"),
            ("task executions", self.executions),
            ("finished twice (raw: 2+ finished rows)", self.finished_twice),
            ("  finished (acknowledged) task re-run (bug)", self.acked_reruns),
            ("  unacknowledged re-runs (holder died/paused before saving)", self.unacked_reruns),
            ("interrupted re-runs (first run never finished)", self.interrupted_reruns),
            ("same-holder re-runs (bug)", self.same_holder_reruns),
            ("SUCCESS writes landed", self.success_writes),
            ("SUCCESS landed for two executions (bug)", self.success_rewrites),
            ("writes accepted from a fenced holder (bug)", self.fenced_writes_landed),
            ("results not from the newest holder (fenced write landed)", self.stale_results),
            ("results naming a missing/unfinished execution", self.result_missing + self.result_unfinished),
            ("atoms not SUCCESS in complete jobs", self.atoms_not_success),
            ("board results != logbook atoms", self.board_result_mismatch),
            ("logbook owner != board owner", self.owner_mismatch),
            ("executions with unknown token", self.tokens_unknown),
            ("reclaims (claims beyond the first)", self.reclaims),
            ("'reclaimed' events in job histories", self.reclaimed_events),
            ("fenced refusals in conductor logs", self.log_counts["fenced_refusals"]),
            ("'claim lost' in conductor logs", self.log_counts["claims_lost"]),
            ("session losses in conductor logs", self.log_counts["sessions_lost"]),
            ("malformed znodes reported in logs", self.log_counts["malformed_reported"]),
            ("jobs crashed with an unexpected error", self.log_counts["unexpected_errors"]),
            ("tracebacks in logs (all)", self.log_counts["tracebacks"]),
            ("tracebacks through jobboard code", dict(self.traceback_sites) or "none"),
            ("conductors killed (-9)", e.conductors_killed),
            ("conductors started", e.conductors_started),
            ("conductors paused past session timeout", e.pauses),
            ("ZooKeeper restarts (of which leader)", f"{e.zookeeper_restarts} ({e.leader_restarts})"),
            ("bad inputs", ", ".join(e.bad_inputs)),
            ("garbage missing from Board.scan_malformed()", self.garbage_unreported or "none"),
            ("unexpected conductor exits", len(e.unexpected_exits)),
            ("consumes given up (job abandoned or left to its session)",
             self.log_counts["could_not_finish"]),
        ]
        width = max(len(name) for name, _ in rows)
        lines = ["chaos report", "-" * 12]
        lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
        if self.problems:
            lines.append("problems:")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


_FRAME = re.compile(r'File "[^"]*/(jobboard/[^"]+)", line \d+, in (\w+)')


def count_logs(texts: Iterable[str]) -> Counter:
    counts: Counter = Counter()
    for text in texts:
        for name, pattern in LOG_PATTERNS.items():
            counts[name] += len(pattern.findall(text))
    return counts


_RECORD = re.compile(r"^(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ )", re.MULTILINE)
_TRACEBACK = "Traceback (most recent call last):"
_KAZOO_RERAISE = "raise self._exception"


def traceback_sites(texts: Iterable[str]) -> Counter:
    """Tracebacks that pass through jobboard code, by their innermost
    jobboard frame and exception: ``"jobboard/x.py:func: SomeError"``.

    Only the stack that really raised counts: the last traceback of each
    logged chain, up to the point where kazoo re-raised a stored exception.
    kazoo hands one exception instance to every request a dropped connection
    fails; each raise of it adds to that instance's traceback and context, so
    a library traceback can show, after or chained before its own frames, a
    jobboard call in another thread that met and handled the same instance.
    Tracebacks entirely inside libraries (kazoo logging a watcher that met
    an expired session) are not counted."""
    sites: Counter = Counter()
    for text in texts:
        for record in _RECORD.split(text):
            if _TRACEBACK not in record:
                continue
            frames, exception, stale = [], "?", False
            for line in record.rsplit(_TRACEBACK, 1)[1].splitlines()[:400]:
                match = _FRAME.search(line)
                if match:
                    if not stale:
                        frames.append(f"{match.group(1)}:{match.group(2)}")
                    continue
                if line.strip() == _KAZOO_RERAISE:
                    stale = True
                elif not line.startswith(" ") and line.strip():
                    exception = line.strip().split(":")[0]
                    break
            if frames:
                sites[f"{' > '.join(frames[-2:])}: {exception}"] += 1
    return sites


def traceback_excerpts(named_texts: Iterable[tuple[str, str]], limit: int = 3,
                       lines: int = 30) -> list[str]:
    """The first ``limit`` tracebacks of any kind in the logs, each as the log
    name and the ``lines`` lines from the record that logged it: for the
    message of a failed assertion (a traceback is a finding, whoever raised:
    an exception in kazoo's threads can mean a watch that died)."""
    out: list[str] = []
    for name, text in named_texts:
        all_lines = text.splitlines()
        for number, line in enumerate(all_lines):
            if _TRACEBACK not in line:
                continue
            start = number
            while start > 0 and not _RECORD.match(all_lines[start]) and number - start < 5:
                start -= 1
            out.append(f"--- {name}:{start + 1}\n" + "\n".join(all_lines[start:start + lines]))
            if len(out) >= limit:
                return out
    return out


def load_executions(url: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """label -> task -> execution rows (oldest first)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    with executions_engine(url).connect() as conn:
        rows = conn.execute(sql_text(
            "SELECT id, job_id, label, task, pid, conductor, token, started_at, finished_at "
            "FROM executions ORDER BY id")).mappings().all()
    for row in rows:
        out[row["label"]][row["task"]].append(dict(row))
    return out


def load_success_writes(url: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(job id, task) -> the SUCCESS atom writes that landed, in order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    with executions_engine(url).connect() as conn:
        rows = conn.execute(sql_text(
            "SELECT job_id, name, result, logbook_token, logbook_owner, written_at "
            "FROM atom_writes WHERE state = 'SUCCESS' ORDER BY id")).mappings().all()
    for row in rows:
        write = dict(row)
        write["result"] = loads(bytes(row["result"])) if row["result"] is not None else None
        out[(row["job_id"], row["name"])].append(write)
    return out


def collect(board: Board, logbook: Logbook, executions_url: str, jobs: dict[str, str],
            broken_job: str, log_texts: Iterable[str], events: ChaosEvents) -> ChaosReport:
    """Build the report.

    Args:
        jobs: label -> job uuid of every chaos job posted.
        broken_job: uuid of the job posted with an unknown factory.
    """
    report = ChaosReport(jobs_posted=len(jobs), events=events)
    log_texts = list(log_texts)
    report.log_counts = count_logs(log_texts)
    report.traceback_sites = traceback_sites(log_texts)
    executions = load_executions(executions_url)
    writes = load_success_writes(executions_url)
    report.executions = sum(len(rows) for tasks in executions.values() for rows in tasks.values())
    report.success_writes = sum(len(w) for w in writes.values())

    try:
        broken = board.get(broken_job)
        report.broken_job_state = broken.state.value
        report.broken_job_reason = (broken.outcome or {}).get("reason") or ""
    except (JobNotFound, MalformedData) as exc:
        report.broken_job_state = f"missing ({exc})"

    for label, job_id in sorted(jobs.items()):
        try:
            job = board.get(job_id)
        except (JobNotFound, MalformedData) as exc:
            report.lost += 1
            report.problem(f"{label} {job_id}: {exc}")
            continue
        report.jobs_states[job.state.value] += 1
        report.reclaims += max(0, job.claims - 1)
        report.reclaimed_events += sum(1 for h in job.history if h.get("event") == "reclaimed")
        if job.state is not JobState.COMPLETE:
            if not job.finished:
                report.lost += 1
            report.problem(f"{label} {job_id}: {job.state.value} {job.outcome}")
            continue
        report.jobs_complete += 1
        _check_job(report, logbook, label, job, executions.get(label, {}), writes)
    return report


def _check_job(report: ChaosReport, logbook: Logbook, label: str, job: Any,
               tasks: dict[str, list[dict[str, Any]]],
               writes: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    flow = logbook.load_flow(job.uuid)
    if flow is None or flow.state is not FlowState.SUCCESS:
        report.atoms_not_success += len(TASKS)
        report.problem(f"{label}: flow is {flow and flow.state}")
        return
    info = logbook.get_logbook(job.uuid)
    if info.owner != job.owner:
        report.owner_mismatch += 1
        report.problem(f"{label}: logbook owner {info.owner} != board owner {job.owner}")
    board_results = (job.outcome or {}).get("results") or {}
    for task in TASKS:
        where = f"{label}/{task}"
        rows = tasks.get(task, [])
        report.tokens_unknown += sum(1 for r in rows if r["token"] is None)
        if sum(1 for r in rows if r["finished_at"] is not None) >= 2:
            report.finished_twice += 1
        by_id = {r["id"]: r for r in rows}

        # Every SUCCESS that landed came from the logbook's current holder.
        landed = writes.get((job.uuid, task), [])
        exec_ids = []
        for write in landed:
            result = write["result"] if isinstance(write["result"], dict) else {}
            if result.get("exec_id") not in exec_ids:
                exec_ids.append(result.get("exec_id"))
            if result.get("token") is None:
                continue
            if result["token"] != write["logbook_token"]:
                report.fenced_writes_landed += 1
                report.problem(f"{where}: SUCCESS from token {result['token']} landed while "
                               f"the logbook's token was {write['logbook_token']}")
        if len(exec_ids) > 1:
            report.success_rewrites += 1
            report.problem(f"{where}: SUCCESS landed for executions {exec_ids}")
        first = by_id.get(exec_ids[0]) if exec_ids else None
        if first is not None and first["token"] is not None:
            for row in rows:
                if row["token"] is not None and row["token"] > first["token"]:
                    report.acked_reruns += 1
                    report.problem(f"{where}: run again by token {row['token']} (exec "
                                   f"{row['id']}) after token {first['token']}'s SUCCESS")

        atom = flow.atoms.get(task)
        if atom is None or atom.state is not AtomState.SUCCESS:
            report.atoms_not_success += 1
            report.problem(f"{where}: atom {atom and atom.state}")
            continue
        if board_results.get(f"{task}_run") != atom.result:
            report.board_result_mismatch += 1
            report.problem(f"{where}: board result {board_results.get(f'{task}_run')} "
                           f"!= atom result {atom.result}")
        exec_id = atom.result.get("exec_id") if isinstance(atom.result, dict) else None
        chosen = by_id.get(exec_id)
        if chosen is None or chosen["job_id"] not in (None, job.uuid):
            report.result_missing += 1
            report.problem(f"{where}: result {atom.result} names no execution of it")
            continue
        if chosen["finished_at"] is None:
            report.result_unfinished += 1
            report.problem(f"{where}: result names unfinished execution {chosen['id']}")
        for row in rows:
            if row is chosen or row["token"] is None or chosen["token"] is None:
                continue
            if row["token"] > chosen["token"]:
                report.stale_results += 1
                report.problem(f"{where}: result from token {chosen['token']} (exec "
                               f"{chosen['id']}) but token {row['token']} ran it too")
            elif row["token"] == chosen["token"]:
                report.same_holder_reruns += 1
                report.problem(f"{where}: token {row['token']} ran it twice "
                               f"(exec {row['id']} and {chosen['id']})")
            elif row["finished_at"] is not None:
                report.unacked_reruns += 1
            else:
                report.interrupted_reruns += 1
