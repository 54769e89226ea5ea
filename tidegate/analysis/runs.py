"""Project runs: every step evaluated in order, in the background, under the RUNNER's access.

A run's state lives in the `project_runs` table so that any server process can report it;
the asyncio task that computes it lives in the process that started it. Cancelling sets
the run's row to `cancelled` (any process) and its task's event (this process; another
process's task sees the row within a second) so the running query is interrupted.

Reported statuses (the SDK's): idle (never run, or the last run was cancelled), running,
complete, error. A run whose process died never finishes its row: once older than every
step's query deadline plus a margin, it reads as error "run interrupted". The state is
a database row, so every node reports it alike, whichever node computed the run; nobody
resumes it (a user starts it again).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tidegate.access.analysis import EDIT, VIEW, open_project
from tidegate.analysis import engine
from tidegate.analysis.projects import step_count
from tidegate.audit.record import RequestContext, record
from tidegate.catalog.analysis import Project, ProjectRun
from tidegate.config import QueryLimits
from tidegate.core.principal import Principal
from tidegate.db.base import isoformat, utcnow
from tidegate.db.engine import session_scope
from tidegate.errors import Conflict, Forbidden, TidegateError
from tidegate.ids import new_id
from tidegate.orgs.epoch import bump_access_epoch
from tidegate.orgs.service import get_user

log = logging.getLogger("tidegate.runs")

RUNNING, COMPLETE, ERROR, CANCELLED, IDLE = "running", "complete", "error", "cancelled", "idle"
STALE_MARGIN_SECONDS = 60.0
CANCEL_POLL_SECONDS = 1.0
INTERRUPTED = "run interrupted (the server process running it stopped)"


@dataclass
class _LiveRun:
    task: asyncio.Task
    cancel: threading.Event


# The runs this process is computing, by run id (a strong reference keeps each task alive).
_live: dict[str, _LiveRun] = {}


@dataclass(frozen=True)
class RunState:
    project_id: str
    status: str  # idle | running | complete | error
    run_id: str | None = None
    message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def is_running(self) -> bool:
        return self.status == RUNNING


def _latest(session: Session, project_id: str) -> ProjectRun | None:
    return session.scalar(
        select(ProjectRun)
        .where(ProjectRun.project_id == project_id)
        .order_by(ProjectRun.started_at.desc(), ProjectRun.id.desc())
        .limit(1)
    )


def _is_stale(session: Session, run: ProjectRun, limits: QueryLimits) -> bool:
    allowed = max(step_count(session, run.project_id), 1) * limits.timeout_seconds + STALE_MARGIN_SECONDS
    return run.started_at + timedelta(seconds=allowed) < utcnow()


def state_of(session: Session, project_id: str, limits: QueryLimits) -> RunState:
    """The project's run status as every process reports it (no access check: see run_status)."""
    run = _latest(session, project_id)
    if run is None:
        return RunState(project_id, IDLE)
    status, message = run.status, run.message
    if status == RUNNING and _is_stale(session, run, limits):
        status, message = ERROR, INTERRUPTED
    if status == CANCELLED:
        status = IDLE
    return RunState(project_id, status, run.id, message, isoformat(run.started_at), isoformat(run.finished_at))


def run_status(session: Session, principal: Principal, project_id: str, limits: QueryLimits) -> RunState:
    open_project(session, principal, project_id, need=VIEW)
    return state_of(session, project_id, limits)


def start_run(
    session: Session,
    principal: Principal,
    project_id: str,
    limits: QueryLimits,
    *,
    user_id: str | None = None,
    context: RequestContext | None = None,
) -> str:
    """Records a new running run and returns its id; `launch` then computes it. The steps are
    evaluated under the caller's own access: `user_id` (the SDK's "execution context") must
    be the caller, or, for an admin, any active user of the organization, for the record."""
    open_project(session, principal, project_id, need=EDIT)
    requested_for = None
    if user_id:
        user = get_user(session, principal.org_id, user_id)
        if user.id != principal.user_id and not principal.is_admin:
            raise Forbidden("run_as_forbidden", "A run is evaluated under your own access: user_id must be you.")
        requested_for = user.id
    # Two starts of one project on two nodes (or workers) at once: the second waits here for
    # the first's commit, then sees its run. A write, not SELECT FOR UPDATE: it locks the row
    # on PostgreSQL and, on SQLite (whose driver begins a transaction at the first write),
    # takes the database's write lock before the check below reads.
    session.execute(
        update(Project)
        .where(Project.id == project_id)
        .values(id=Project.id)
        .execution_options(synchronize_session=False)
    )
    if state_of(session, project_id, limits).is_running:
        raise Conflict("run_in_progress", "This project is already running; cancel it or wait for it to finish.")
    run = ProjectRun(
        id=new_id("api"),
        project_id=project_id,
        started_by=principal.user_id,
        key_id=principal.key_id,
        status=RUNNING,
        started_at=utcnow(),
    )
    session.add(run)
    session.flush()
    record(
        session,
        principal,
        "project.run_started",
        org_id=principal.org_id,
        target_type="project",
        target_id=project_id,
        details={"run_id": run.id, **({"user_id": requested_for} if requested_for else {})},
        context=context,
    )
    bump_access_epoch(session, principal.org_id)
    return run.id


def cancel_run(
    session: Session,
    principal: Principal,
    project_id: str,
    limits: QueryLimits,
    *,
    context: RequestContext | None = None,
) -> str | None:
    """Marks the project's running run cancelled; returns its id (None: nothing was running)."""
    open_project(session, principal, project_id, need=EDIT)
    state = state_of(session, project_id, limits)
    if not state.is_running or state.run_id is None:
        return None
    session.execute(
        update(ProjectRun)
        .where(ProjectRun.id == state.run_id, ProjectRun.status == RUNNING)
        .values(status=CANCELLED, finished_at=utcnow(), message="cancelled")
    )
    record(
        session,
        principal,
        "project.run_cancelled",
        org_id=principal.org_id,
        target_type="project",
        target_id=project_id,
        details={"run_id": state.run_id},
        context=context,
    )
    bump_access_epoch(session, principal.org_id)
    return state.run_id


def signal_cancel(run_id: str) -> None:
    """Interrupt the run now if this process computes it (others notice the row: _watch)."""
    live = _live.get(run_id)
    if live is not None:
        live.cancel.set()


def launch(database_url: str, limits: QueryLimits, principal: Principal, project_id: str, run_id: str) -> None:
    """Start computing a run committed by start_run (on the running event loop)."""
    cancel = threading.Event()
    task = asyncio.get_running_loop().create_task(_execute(database_url, limits, principal, project_id, run_id, cancel))
    _live[run_id] = _LiveRun(task, cancel)
    task.add_done_callback(lambda _: _live.pop(run_id, None))


def _plan(database_url: str, principal: Principal, project_id: str) -> engine.ProjectPlan:
    with session_scope(database_url) as session:
        return engine.plan(session, principal, project_id)


def _read_status(database_url: str, run_id: str) -> str | None:
    with session_scope(database_url) as session:
        return session.scalar(select(ProjectRun.status).where(ProjectRun.id == run_id))


def _finish(database_url: str, run_id: str, status: str, message: str | None) -> None:
    with session_scope(database_url) as session:
        # A run cancelled meanwhile stays cancelled.
        session.execute(
            update(ProjectRun)
            .where(ProjectRun.id == run_id, ProjectRun.status == RUNNING)
            .values(status=status, message=message, finished_at=utcnow())
        )


async def _watch(database_url: str, run_id: str, cancel: threading.Event) -> None:
    """Sets `cancel` once the run's row says cancelled (a cancel served by another process)."""
    while not cancel.is_set():
        await asyncio.sleep(CANCEL_POLL_SECONDS)
        try:
            if await run_in_threadpool(_read_status, database_url, run_id) == CANCELLED:
                cancel.set()
        except Exception as exc:  # the database is briefly down: try again next time
            log.warning("run %s: cannot read its status (%s)", run_id, type(exc).__name__)


async def _execute(
    database_url: str,
    limits: QueryLimits,
    principal: Principal,
    project_id: str,
    run_id: str,
    cancel: threading.Event,
) -> None:
    status, message = COMPLETE, None
    watcher = asyncio.get_running_loop().create_task(_watch(database_url, run_id, cancel))
    current = None
    try:
        plan = await run_in_threadpool(_plan, database_url, principal, project_id)
        for spec in plan.steps:
            if cancel.is_set():
                break
            current = spec.name
            await engine.run_step(limits, principal, plan, spec.id, cancel=cancel)
        if cancel.is_set():
            status, message = CANCELLED, "cancelled"
    except engine.StepCancelled:
        status, message = CANCELLED, "cancelled"
    except TidegateError as exc:
        status, message = ERROR, (f"step {current}: {exc.message}" if current else exc.message)
    except Exception:
        log.exception("run %s of project %s failed", run_id, project_id)
        status, message = ERROR, "internal error while running the project"
    finally:
        watcher.cancel()
        try:
            await run_in_threadpool(_finish, database_url, run_id, status, message)
        except Exception as exc:  # then it reads as interrupted once stale
            log.warning("run %s: cannot record its end (%s)", run_id, type(exc).__name__)
