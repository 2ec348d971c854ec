"""The ``jobboard`` command (entry point ``jobboard.cli:main``).

Board commands read ``--zk``/``JOBBOARD_ZK``, ``--root``/``JOBBOARD_ROOT``,
``--logbook``/``JOBBOARD_LOGBOOK`` and the ZooKeeper credentials
(``--auth-file``/``JOBBOARD_AUTH_FILE``, ``JOBBOARD_AUTH``, or ``--auth``,
which ``ps`` shows to everyone); ``logbook`` commands read ``--logbook``
only. The default logbook is ``$XDG_STATE_HOME/jobboard/logbook.db``
(``~/.local/state/jobboard/logbook.db``), the same from every directory.
Every command takes ``--json`` and then prints one JSON object on stdout.
A job id may be given as any unique prefix of it.

Exit codes: 0 done, 1 a user error (one ``error:`` line on stderr, never a
traceback), 2 a usage error; ``post --wait`` adds 3 FAILED, 4 CANCELLED,
5 DEAD, 6 not finished within ``--timeout``
(:class:`~jobboard.cli.common.ExitCode`).

One module per concern: :mod:`.app` (the group, errors, config file),
:mod:`.common` (options, output, exit codes), :mod:`.settings` (config
keys), :mod:`.zk` (connecting), :mod:`.render` (results and failures),
:mod:`.posting` (``post``), :mod:`.inspection` (``jobs``, ``show``,
``claims``, ``conductors``, ``fsck``, ``prune``, ``upgrade``), :mod:`.admin`,
:mod:`.admin_rules` and :mod:`.admin_actions` (``abandon``, ``transfer``, ``cancel``, ``retry``,
``trash``, ``suspend``, ``resume``), :mod:`.daemon` (``conductor``, ``exporter``),
:mod:`.preflight` (a conductor's start checks), :mod:`.logbook` and
:mod:`.logbook_access` (``logbook ...``), :mod:`.dev` (``dev zookeeper``,
``demo``).
"""

from __future__ import annotations

from jobboard.cli.admin import abandon, cancel, resume, retry, suspend, transfer, trash
from jobboard.cli.app import main
from jobboard.cli.common import CONNECT_TIMEOUT, DAEMON_CONNECT_TIMEOUT, ExitCode
from jobboard.cli.daemon import conductor, exporter
from jobboard.cli.dev import demo, dev_group
from jobboard.cli.inspection import claims, conductors, fsck, jobs, prune, show, upgrade
from jobboard.cli.logbook import logbook_group
from jobboard.cli.posting import post
from jobboard.cli.schedule import schedule

__all__ = ["CONNECT_TIMEOUT", "DAEMON_CONNECT_TIMEOUT", "ExitCode", "main"]

for _command in (post, jobs, show, fsck, claims, abandon, transfer, trash, cancel, retry,
                 suspend, resume, conductors, exporter, logbook_group, conductor, demo, dev_group, schedule,
                 prune, upgrade):
    main.add_command(_command)

# ---- the web console (jobboard[web]) -------------------------------------------
# `jobboard web` lives in jobboard/web/command.py and needs the optional `web`
# extra; without it every other command still works.
try:
    from jobboard.web.command import web as _web
except ImportError:
    _web = None
if _web is not None:
    main.add_command(_web)
# ---- end web console --------------------------------------------------------------
