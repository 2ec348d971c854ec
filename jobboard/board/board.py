"""The job board: post, look up, claim, abandon, consume, transfer, suspend, wait.

The board is composed of plain collaborators, each with one concern, that
take each other in their constructors:

* :class:`~jobboard.board.records.Records` reads and validates job records
  and quarantines bad ones;
* :class:`~jobboard.board.queue.QueueIndex` owns the waiting and delayed
  index (buckets, entry names, promotion, entry repair);
* :class:`~jobboard.board.posting.Posting` posts jobs;
* :class:`~jobboard.board.ownership.Ownership` claims and ends claims;
* :class:`~jobboard.board.admin.Admin` trashes, retries, cancels,
  suspends and resumes, dead-letters, measures, and keeps the conductor
  registry;
* :class:`~jobboard.board.repair.Repair` finds and puts right every
  inconsistency the layout can have (``jobboard fsck``);
* :class:`~jobboard.board.retention.Retention` removes finished jobs once
  an :class:`~jobboard.board.retention.OutcomeArchive` kept their outcome.

:class:`Board` itself connects, sets up the layout and offers the public API
as thin calls on them.

Every state change is one ZooKeeper multi-op transaction, so a job is never
half-claimed or half-consumed (see :mod:`jobboard.board.layout` for the
znodes). Ownership is checked through the job record's version: every change
of owner rewrites the record, so a holder whose claim was reclaimed,
transferred or abandoned fails its next write with :class:`ClaimLost` or
:class:`NotOwner` instead of clobbering the new owner.

How it fails: ZooKeeper unreachable -> :class:`BoardUnavailable`; unknown job
-> :class:`JobNotFound`; a bad argument -> :class:`InvalidArgument`; a
record that does not validate -> reported once (logged, listed by
:meth:`Board.malformed`), quarantined by claimers, skipped by listings.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Iterator

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from jobboard.board import _zk
from jobboard.board.admin import Admin
from jobboard.board.job import Job, JobOutcome, check_job_id
from jobboard.board.layout import DEFAULT_QUEUE, LAYOUT_VERSION, Paths, check_queue
from jobboard.board.ownership import Ownership
from jobboard.board.posting import Posting
from jobboard.board.queue import QueueIndex
from jobboard.board.records import Records
from jobboard.board.fixes import Fixes
from jobboard.board.repair import Finding, Repair
from jobboard.board.retention import OutcomeArchive, PruneReport, Retention
from jobboard.board.security import verify_board_acl
from jobboard.errors import (BoardError, InvalidArgument, JobNotFound, MalformedData,
                             WaitTimeout)
from jobboard.events import Notifier
from jobboard.serialization import dumps, loads
from jobboard.states import JobState

# ZooKeeper refuses packets over jute.maxbuffer (1 MiB by default); a post is
# one multi carrying the record plus a few small ops, so keep well under it.
DEFAULT_MAX_RECORD_BYTES = 900_000
DEFAULT_MAX_CLAIMS = 5
DEFAULT_MAX_REFUSALS = 5

class Board:
    """A job board under one root znode.

    Args:
        client: a started KazooClient (the board does not own it unless made by
            :meth:`connect`).
        root: the board's root znode.
        max_record_bytes: largest encoded job accepted by :meth:`post`.
        max_claims: a job whose holders died (or crashed on it) this many
            times is dead-lettered by the next claim instead of running again;
            abandons, transfers and outages of a dependency do not count.
        notifier: where ``job.*`` events go.
        max_refusals: a job given back this many times by conductors that
            cannot import its factory is parked (DEAD, with the reason).
        archive: where the outcome of a pruned job is found
            (:meth:`wait` answers from it once the record is gone); the
            conductor and the command line wire the logbook here. It may
            also be set later (``board.archive = ...``).
    """

    def __init__(self, client: KazooClient, *, root: str = "/jobboard",
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 max_claims: int = DEFAULT_MAX_CLAIMS,
                 notifier: Notifier | None = None,
                 max_refusals: int = DEFAULT_MAX_REFUSALS,
                 archive: OutcomeArchive | None = None) -> None:
        if max_refusals < 1:
            raise InvalidArgument("max_refusals must be at least 1", argument="max_refusals")
        self.client = client
        self.paths = Paths(root)
        self.max_claims = max_claims
        self.max_refusals = max_refusals
        self.archive = archive
        #: The layout the board had when this client set it up (older than
        #: LAYOUT_VERSION: :meth:`upgrade` it).
        self.layout_version: int | None = None
        self.notifier = notifier or Notifier()
        self.records = Records(client, self.paths)
        self.index = QueueIndex(client, self.paths, self.records)
        self.posting = Posting(client, self.paths, self.records, self.index, self.notifier,
                               max_record_bytes=max_record_bytes,
                               ensure_layout=self._ensure_layout)
        self.ownership = Ownership(client, self.paths, self.records, self.index,
                                   self.notifier, max_record_bytes=max_record_bytes)
        self.admin = Admin(client, self.paths, self.records, self.index, self.ownership,
                           self.notifier)
        self.repair = Repair(Fixes(client, self.paths, self.records, self.index,
                                   self.ownership, self.admin))
        self.retention = Retention(client, self.paths, self.records)
        self._owns_client = False
        self._set_up = False

    @property
    def bucket_size(self) -> int:
        return self.index.bucket_size

    @bucket_size.setter
    def bucket_size(self, size: int) -> None:
        self.index.bucket_size = size

    @property
    def max_record_bytes(self) -> int:
        return self.posting.max_record_bytes

    # -- connection -------------------------------------------------------------

    @classmethod
    def connect(cls, hosts: str, *, root: str = "/jobboard",
                auth: tuple[str, str] | None = None, timeout: float = 10.0,
                session_timeout: float = 10.0, **options: Any) -> "Board":
        """Connect to ZooKeeper and open the board under ``root``.

        Args:
            hosts: ``host:port,...`` (optionally with a chroot).
            auth: ``(user, password)``: znodes get digest ACLs for these
                credentials, so clients without them can neither read nor
                write; a root that others can read or write is refused.
            timeout: seconds to wait for the first connection.
            session_timeout: the ZooKeeper session timeout asked for; a dead
                holder's claims vanish after it.

        Raises:
            BoardUnavailable: ZooKeeper cannot be reached within ``timeout``.
            BoardInsecure: with ``auth``, the root or its layout is open to others.
        """
        client = _zk.make_client(hosts, auth=auth, session_timeout=session_timeout)
        _zk.start(client, hosts, timeout)
        try:
            board = cls(client, root=root, **options)
        except Exception:
            client.stop()
            client.close()
            raise
        board._owns_client = True
        try:
            if auth:
                verify_board_acl(client, board.paths, auth)
            board.setup()
            if auth:   # a root made by somebody else between the check and the set-up
                verify_board_acl(client, board.paths, auth)
        except Exception:
            board.close()
            raise
        return board

    def close(self) -> None:
        if self._owns_client:
            try:
                self.client.stop()
            finally:
                self.client.close()

    def __enter__(self) -> "Board":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def session_id(self) -> int | None:
        return self.ownership.session_id

    def setup(self) -> None:
        """Create the board's containers once (idempotent, safe to race). A
        new board gets this release's layout; a board of an older layout gets
        the containers it lacks and keeps its marker until :meth:`upgrade`
        moved its waiting jobs (:attr:`layout_version` tells)."""
        if self._set_up:
            return
        with _zk.translated("setting up the board"):
            version = self._marker()
            if isinstance(version, int) and version > LAYOUT_VERSION:
                raise BoardError(f"the board at {self.paths.root} has layout {version}, newer "
                                 f"than this release's {LAYOUT_VERSION}: upgrade jobboard")
            if version != LAYOUT_VERSION:
                existed = self.client.retry(self.client.exists, self.paths.jobs) is not None
                self.client.retry(self.client.ensure_path, self.paths.root)
                pending = [self.client.create_async(path)
                           for path in self.paths.containers() + self.paths.shards()]
                for result in pending:
                    try:
                        result.get(timeout=30)
                    except NodeExistsError:
                        pass
                if version is None and not existed:
                    self._write_marker()     # a new board
                    version = LAYOUT_VERSION
            self.layout_version = version if isinstance(version, int) else 1
        self._set_up = True

    def _marker(self) -> int | None:
        try:
            marker, _ = self.client.retry(self.client.get, self.paths.layout)
            version = loads(marker).get("layout")
        except (NoNodeError, MalformedData, AttributeError):   # absent or unreadable
            return None
        return version if isinstance(version, int) else None

    def _write_marker(self) -> None:
        data = dumps({"layout": LAYOUT_VERSION})
        try:
            self.client.create(self.paths.layout, data)
        except NodeExistsError:
            self.client.set(self.paths.layout, data)

    def upgrade(self) -> dict[str, int]:
        """Bring a board of an older layout to this release's (see
        :mod:`jobboard.board.layout`): move every waiting job's entry into its
        queue, index every finished job for retention, then write the marker.
        Idempotent, and safe beside running conductors and posters.

        Returns:
            ``{"from": old layout, "to": new layout, "moved": entries moved,
            "indexed": finished jobs indexed}``.

        Raises:
            BoardUnavailable: ZooKeeper unreachable.
        """
        self.setup()
        before = self.layout_version or 1
        moved = indexed = 0
        with _zk.translated("upgrading the board"):
            if before < LAYOUT_VERSION:
                moved = self.index.migrate_legacy()
                indexed = self.retention.index_all()
                self._write_marker()
            else:
                moved = self.index.migrate_legacy()   # stragglers of an old poster
        self.layout_version = LAYOUT_VERSION
        return {"from": before, "to": LAYOUT_VERSION, "moved": moved, "indexed": indexed}

    def _ensure_layout(self) -> None:
        self._set_up = False
        self.setup()

    # -- posting ----------------------------------------------------------------

    def post(self, factory: str, *, args: dict[str, Any] | None = None,
             store: dict[str, Any] | None = None, name: str | None = None,
             priority: int = 0, delay: float | None = None, key: str | None = None,
             details: dict[str, Any] | None = None, queue: str = DEFAULT_QUEUE) -> Job:
        """Post a job; returns it as stored.

        Args:
            factory: ``package.module:function`` that builds the flow.
            args: keyword arguments for the factory.
            store: the flow's initial inputs.
            priority: higher runs first (-9999..9999).
            delay: seconds before the job may be claimed.
            key: idempotency key: posting again with the same key returns the
                job already posted (atomic, also under concurrent posters),
                for as long as that job is on the board (keys expire with
                their jobs: see :mod:`jobboard.board.retention`).
            queue: the queue it waits in: only conductors serving it claim
                it (a lowercase letter, then up to 31 of ``a-z0-9_-``).

        Raises:
            InvalidArgument: an argument has an unusable value.
            PayloadTooLarge: the encoded job exceeds ``max_record_bytes``.
            MalformedData: a value cannot be encoded with msgpack.
        """
        return self.posting.post(factory, args=args, store=store, name=name,
                                 priority=priority, delay=delay, key=key, details=details,
                                 queue=queue)

    def post_many(self, specs: Iterable[dict[str, Any]]) -> list[Job]:
        """Post many jobs, pipelining the transactions (same arguments as
        :meth:`post`, one dict per job). Jobs with a ``key`` are posted one by
        one so that duplicates resolve exactly as in :meth:`post`."""
        return self.posting.post_many(specs)

    # -- reading ----------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job's current record.

        Raises:
            InvalidArgument: ``job_id`` is not a job id.
            JobNotFound: no such job (or trashed).
            MalformedData: its znode does not hold a valid record.
        """
        return self.records.read(check_job_id(job_id))[0]

    def jobs(self, state: JobState | str | None = None, *,
             queue: str | None = None) -> Iterator[Job]:
        """Iterate over jobs, optionally in one state and one queue. Waiting
        jobs come in claim order; malformed records are reported once and
        skipped."""
        try:
            state = JobState(state) if state else None
        except ValueError:
            raise InvalidArgument(f"{state!r} is not a job state", argument="state") from None
        if queue is not None:
            check_queue(queue)
        with _zk.translated("listing jobs"):
            if state is JobState.UNCLAIMED:
                ids = list(self.index.waiting_ids(queue))
            elif state is JobState.CLAIMED:
                ids = sorted(_zk.children(self.client, self.paths.running))
            else:
                ids = self.records.all_ids()
            for job, _ in self.records.read_many(ids):
                if (state is None or job.state is state) and queue in (None, job.queue):
                    yield job

    def report_malformed(self, path: str, reason: str) -> None:
        """Log a bad znode once; admins see it in :meth:`malformed`."""
        self.records.report(path, reason)

    def malformed(self) -> dict[str, str]:
        """Bad znodes this board has met so far and records quarantined by
        anyone: path -> reason."""
        return self.records.malformed()

    def scan_malformed(self) -> dict[str, str]:
        """Read every job record and index entry, reporting what does not
        validate (an admin's full check; lists every shard)."""
        with _zk.translated("scanning the board"):
            for _ in self.jobs():
                pass
            for bucket in self.index.buckets():
                self.index.entries(bucket)
            for _ in self.index.delayed_entries():
                pass
        return self.malformed()

    def fsck(self, *, repair: bool = False) -> list[Finding]:
        """Check every layout invariant (see :mod:`jobboard.board.repair`);
        with ``repair``, put each inconsistency right. Returns what was found."""
        return self.repair.sweep(fix=repair)

    # -- claims (see jobboard.board.ownership) ---------------------------------------

    def claim(self, job: Job | str, owner: str) -> Job:
        """Claim a job directly (conductors use :class:`Claimer`, which picks
        the best job). Returns the job with its claim (fencing token).

        Raises:
            AlreadyClaimed: somebody holds it.
            NotReady: it is delayed.
            JobNotFound: no such job.
        """
        return self.ownership.claim(job, owner)

    def take(self, job: Job, version: int, owner: str, *, entry: str | None = None,
             running_exists: bool = False) -> Job | None:
        """One claim transaction (see :meth:`Ownership.take`)."""
        return self.ownership.take(job, version, owner, entry=entry,
                                   running_exists=running_exists)

    def take_async(self, job: Job, version: int, owner: str, *, entry: str | None = None,
                   running_exists: bool = False,
                   mark_working: bool = False) -> Callable[[], Job | None]:
        """Send a claim transaction now; the returned call waits for its answer
        (``mark_working``: see :meth:`Ownership.take_async`)."""
        return self.ownership.take_async(job, version, owner, entry=entry,
                                         running_exists=running_exists,
                                         mark_working=mark_working)

    def holds_claim(self, job_id: str, *, watch: Callable[[Any], None] | None = None) -> bool:
        """Whether this board's session holds the job's claim node."""
        return self.ownership.holds_claim(job_id, watch=watch)

    def watch_claim(self, job_id: str, watch: Callable[[Any], None],
                    answer: Callable[[bool | None], None]) -> None:
        """Set ``watch`` on the job's claim node without waiting for the
        answer (see :meth:`Ownership.watch_claim`)."""
        self.ownership.watch_claim(job_id, watch, answer)

    def claim_owner(self, job_id: str) -> str | None:
        """Who holds the claim on a job now (None when nobody)."""
        return self.ownership.claim_owner(check_job_id(job_id))

    def consume(self, job: Job | str, owner: str, outcome: dict[str, Any] | None = None,
                *, state: JobState = JobState.COMPLETE, working: bool = False) -> Job:
        """Finish a claimed job with ``outcome``, dropping the claim (and the
        caller's working marker, with ``working``)."""
        return self.ownership.consume(job, owner, outcome, state=state, working=working)

    def abandon(self, job: Job | str, owner: str, *, crashed: bool = False) -> Job:
        """Give a claimed job back: claimable again at once, ahead of its priority
        (``crashed``: count it against ``max_claims``)."""
        return self.ownership.abandon(job, owner, crashed=crashed)

    def suspend_held(self, job: Job | str, owner: str, *, working: bool = False) -> Job:
        """The holder gives a job up into SUSPENDED, as an admin's suspend
        request asked (claim, markers and request dropped in one transaction)."""
        return self.ownership.suspend_held(job, owner, working=working)

    def start_working(self, job_id: str, mark: str | int, *, stop_timeout: float,
                      abort: Callable[[], bool] = lambda: False) -> float | None:
        """Mark a job's tasks as running in this run (``mark``: its claim's
        ``Job.run_mark``), after the previous run's have stopped or
        ``stop_timeout`` passed; returns the seconds waited, None when
        ``abort()`` turned true first."""
        return self.ownership.start_working(job_id, mark, stop_timeout=stop_timeout,
                                            abort=abort)

    def stop_working(self, job_id: str, mark: str | int) -> None:
        """No task of this run of the job runs any more: the next may start."""
        self.ownership.stop_working(job_id, mark)

    def refuse(self, job: Job | str, owner: str, reason: str) -> Job:
        """Give back a claimed job ``owner`` cannot run (it cannot import the
        job's factory): uncounted against ``max_claims``; the
        ``max_refusals``-th refusal parks it (DEAD with ``reason``)."""
        return self.ownership.refuse(job, owner, reason, max_refusals=self.max_refusals)

    def transfer(self, job: Job | str, from_owner: str | None, to_owner: str) -> Job:
        """Move a claim to another live conductor, which resumes the job."""
        return self.ownership.transfer(job, from_owner, to_owner)

    def restore_orphan(self, job_id: str, *, me: str | None = None) -> Job | None:
        """Put back (or take, when transferred to ``me``) a job whose claim vanished."""
        return self.ownership.restore_orphan(job_id, me=me)

    def orphans(self) -> list[str]:
        """Jobs marked running whose claim is gone."""
        return self.ownership.orphans()

    def claims(self) -> list[dict[str, Any]]:
        """Current claims: job id, owner, since (epoch seconds), fencing token."""
        return self.ownership.claims()

    # -- admin (see jobboard.board.admin) -----------------------------------------

    def trash(self, job: Job | str) -> None:
        """Delete a job that nobody holds, with its index entries and key."""
        self.admin.trash(job)

    def retry(self, job: Job | str) -> Job:
        """Put a dead-lettered, failed or cancelled job back on the board."""
        return self.admin.retry(job)

    def dead_letter(self, job: Job, version: int, entry: str | None, reason: str) -> Job:
        """Take a job out of circulation (state DEAD) with its history."""
        return self.admin.dead_letter(job, version, entry, reason)

    def cancel(self, job: Job | str) -> JobState:
        """Cancel a job; returns its state after the call (see :meth:`Admin.cancel`)."""
        return self.admin.cancel(job)

    def cancel_requested(self, job_id: str, watch: Callable[[Any], None] | None = None) -> bool:
        return self.admin.cancel_requested(job_id, watch=watch)

    def suspend(self, job: Job | str) -> JobState:
        """Suspend a job: a waiting one at once (SUSPENDED), a running one at
        its holder's next task boundary (returns CLAIMED: asked). Not
        claimable until :meth:`resume`. See :meth:`Admin.suspend`.

        Raises:
            InvalidTransition: the job has finished.
        """
        return self.admin.suspend(job)

    def resume(self, job: Job | str) -> Job:
        """Put a SUSPENDED job back on the board, ahead of its priority; it
        continues from the logbook.

        Raises:
            InvalidTransition: the job is not SUSPENDED.
        """
        return self.admin.resume(job)

    def suspend_requested(self, job_id: str,
                          watch: Callable[[Any], None] | None = None) -> bool:
        return self.admin.suspend_requested(job_id, watch=watch)

    def drop_suspend_request(self, job_id: str) -> None:
        self.admin.drop_suspend_request(job_id)

    def depth(self) -> dict[str, Any]:
        """Board gauges from znode stats (see :meth:`Admin.depth`)."""
        return self.admin.depth()

    def waiting_by_queue(self) -> dict[str, int]:
        """Waiting jobs per queue, from znode stats (every queue a job was
        ever posted to has a count, zero included)."""
        return dict(self.depth()["queues"])

    def queues(self) -> list[str]:
        """The names of the board's queues."""
        with _zk.translated("listing queues"):
            return self.index.queues()

    def prune(self, older_than: float, *, archive: OutcomeArchive | None = None,
              batch: int | None = None) -> PruneReport:
        """Remove COMPLETE, FAILED and CANCELLED jobs that finished more than
        ``older_than`` seconds ago, with their idempotency keys, after the
        archive (``archive``, else :attr:`archive`) kept their outcome (see
        :mod:`jobboard.board.retention`). DEAD jobs stay."""
        options = {} if batch is None else {"batch": batch}
        return self.retention.prune(older_than, archive=archive or self.archive, **options)

    def register_conductor(self, name: str, info: dict[str, Any]) -> None:
        self.admin.register_conductor(name, info)

    def unregister_conductor(self, name: str) -> bool:
        return self.admin.unregister_conductor(name)

    def update_conductor(self, name: str, info: dict[str, Any]) -> None:
        self.admin.update_conductor(name, info)

    def conductors(self) -> list[dict[str, Any]]:
        return self.admin.conductors()

    # -- waiting ------------------------------------------------------------------

    def archived(self, job_id: str) -> JobOutcome | None:
        """The outcome :attr:`archive` kept for a pruned job (None without
        an archive, or when it kept none)."""
        if self.archive is None:
            return None
        return self.archive.outcome(check_job_id(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> JobOutcome:
        """Block until the job is finished; returns its outcome.

        A job whose record was pruned (see :meth:`prune`) answers from
        :attr:`archive`.

        Raises:
            InvalidArgument: ``job_id`` is not a job id.
            WaitTimeout: not finished within ``timeout`` seconds.
            JobNotFound: no such job (or trashed while waiting), and none
                archived.
        """
        job_id = check_job_id(job_id)
        changed = threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            changed.clear()
            try:
                job, _ = self.records.read(job_id, watch=lambda _event: changed.set())
            except JobNotFound:
                archived = self.archived(job_id)
                if archived is None:
                    raise
                return archived
            if job.finished:
                return JobOutcome.of(job)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(job_id, timeout or 0.0, job.state)
            # Re-check now and then in case the session (and its watch) was lost.
            changed.wait(min(remaining, 5.0) if remaining is not None else 5.0)

    def wait_many(self, job_ids: Iterable[str],
                  timeout: float | None = None) -> dict[str, JobOutcome]:
        """Block until every job finished or ``timeout`` passed; returns job id
        -> outcome of those finished, in the order given (one not finished in
        time is left out). See :func:`jobboard.notify.wait_many`.

        Raises:
            InvalidArgument: an id is not a job id.
            JobNotFound: a job is not on the board.
        """
        from jobboard.notify.finished import wait_many

        return wait_many(self, job_ids, timeout)

    def on_finished(self, job_id: str, fn: Callable[[JobOutcome], Any], *,
                    on_error: Callable[[Exception], Any] | None = None) -> Any:
        """Call ``fn(outcome)`` once when the job finishes, from a dispatcher
        thread (watch-based, no polling; survives connection losses).
        Returns a handle whose ``cancel()`` stops it. See
        :func:`jobboard.notify.on_finished`."""
        from jobboard.notify.finished import on_finished

        return on_finished(self, job_id, fn, on_error=on_error)
