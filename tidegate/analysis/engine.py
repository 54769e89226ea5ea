"""A project's steps, computed ALWAYS under the reader's access.

`plan` reads what a project is (its steps, and its sources opened AS THE READER with
`access.sources.open_source`: the reader's row filter) into immutable values; `evaluate`
computes one step's whole result from them: the tables it reads by name (project sources,
already filtered for the reader, and earlier steps, computed first), then its SQL in the
sandbox (`data.sandbox`, the /query rules over several named tables). Sharing a project
shares its SQL, never its author's rows: two readers with different policies get different
results from the same step, and the cache never hands one reader's result to another (its
key holds the row filter and version of every source the step reads, directly or not).
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.orm import Session

from tidegate.access import analysis as access_analysis
from tidegate.access.sources import SourceAccess, open_source
from tidegate.caching import ByteLRUCache
from tidegate.catalog.analysis import ProjectSource, Step
from tidegate.catalog.models import Source
from tidegate.config import QueryLimits
from tidegate.core.principal import Principal
from tidegate.data import engine as data_engine
from tidegate.data import querypool, sandbox
from tidegate.errors import Forbidden, InvalidRequest, NotFound

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
# The most rows one step may return: its whole result is held (and cached) in memory.
MAX_STEP_ROWS = 1_000_000
MAX_PAGE_SIZE = data_engine.MAX_PAGE_SIZE
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


class StepFailed(InvalidRequest):
    """This step, or one it reads, could not be computed; the message says which and why."""

    def __init__(self, message: str):
        super().__init__("step_failed", message)


class StepCancelled(InvalidRequest):
    def __init__(self, message: str = "The run was cancelled."):
        super().__init__("run_cancelled", message)


@dataclass(frozen=True)
class StepSpec:
    id: str
    name: str
    sql: str
    position: int
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProjectPlan:
    """A project as one reader sees it now: immutable values only."""

    project_id: str
    revision: int
    steps: tuple[StepSpec, ...]  # in position order
    # Project source name -> the READER's SourceAccess, or why it cannot be read.
    sources: Mapping[str, SourceAccess | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(sorted(self.steps, key=lambda s: (s.position, s.id))))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    def step(self, step_id: str) -> StepSpec:
        for spec in self.steps:
            if spec.id == step_id:
                return spec
        raise NotFound("step_not_found", f"No step {step_id!r} in project {self.project_id!r}.")

    def readable_names(self, step_id: str) -> list[str]:
        """What the step's SQL may read: the project's sources and the steps before it."""
        spec = self.step(step_id)
        return [*self.sources, *(s.name for s in self.steps[: self.steps.index(spec)])]


def check_name(name: Any, what: str = "name") -> str:
    """A step or project source name: an identifier of at most 63 characters."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidRequest(
            "invalid_name" if what == "name" else f"invalid_{what}_name",
            f"A {what} must be an identifier: a letter or _, then letters, digits or _ (at most 63 characters).",
        )
    return name


# ---------------------------------------------------------------------------------------
# Planning: what the project is, opened as the reader
# ---------------------------------------------------------------------------------------


def plan(session: Session, principal: Principal, project_id: str) -> ProjectPlan:
    """The project (opened for VIEW: 404/403 otherwise) with every source opened as the
    reader (`open_source`: the reader's filter), or why the reader cannot read it."""
    project = access_analysis.open_project(session, principal, project_id)
    links = session.scalars(
        select(ProjectSource).where(ProjectSource.project_id == project.id).order_by(ProjectSource.name)
    ).all()
    sources = {link.name: _open_as_reader(session, principal, link.source_id) for link in links}
    steps = session.scalars(select(Step).where(Step.project_id == project.id).order_by(Step.position, Step.id)).all()
    specs = tuple(
        StepSpec(s.id, s.name, s.sql, int(s.position), tuple(str(d) for d in (s.depends_on or ()))) for s in steps
    )
    return ProjectPlan(project.id, int(project.revision or 0), specs, sources)


def _open_as_reader(session: Session, principal: Principal, source_id: str) -> SourceAccess | str:
    try:
        return open_source(session, principal, source_id)
    except (NotFound, Forbidden):
        source = session.get(Source, source_id)
        if source is None or source.deleted_at is not None:
            return f"source {source_id} was deleted"
        return f"you cannot open source {source_id}"


# ---------------------------------------------------------------------------------------
# Validating a step's SQL
# ---------------------------------------------------------------------------------------


def validate_step_sql(sql: str, names: Iterable[str]) -> str:
    """The SQL to store for a step that may read `names` (and its own CTEs): one SELECT by
    the /query sandbox's rules. 400 `invalid_step_sql` (with where the parser stopped, when
    it knows), `unknown_table` naming the table, or `query_too_expensive`."""
    return _validated(sql, names).sql


def _validated(sql: str, names: Iterable[str]) -> sandbox.ValidatedQuery:
    relations = sandbox.Relations.of(names)
    try:
        query = sandbox.validate_query(sql, relations)
    except sandbox.UnknownTable as exc:
        raise InvalidRequest("unknown_table", exc.message) from None
    except sandbox.QueryRefused as exc:
        message = exc.message.rstrip(".")
        where = f" ({exc.where})" if exc.where and exc.where not in message else ""
        raise InvalidRequest("invalid_step_sql", f"{message}{where}.") from None
    except InvalidRequest as exc:
        if exc.code != "invalid_query":
            raise
        raise InvalidRequest("invalid_step_sql", exc.message) from None
    sandbox.check_cost(query)
    return query


def referenced_names(sql: str) -> frozenset[str]:
    """The table names the SQL reads (lower case), not its own CTEs."""
    return sandbox.referenced_tables(sql)


# ---------------------------------------------------------------------------------------
# The result cache: immutable Arrow tables, by everything that decides their rows
# ---------------------------------------------------------------------------------------


class _KeyLocks:
    """One lock per key while anyone uses it: a step is computed once at a time per key, so
    widgets of one step refreshing together wait for the first instead of each running it.
    (Per key, not striped: keys nest along the steps' reads, which never form a cycle, so
    locks are always taken in the same order; a shared stripe could deadlock.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Hashable, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: Hashable, timeout: float) -> Iterator[bool]:
        with self._lock:
            lock, users = self._locks.get(key, (None, 0))
            lock = lock or threading.Lock()
            self._locks[key] = (lock, users + 1)
        acquired = lock.acquire(timeout=max(timeout, 0.0))
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()
            with self._lock:
                users = self._locks[key][1] - 1
                if users:
                    self._locks[key] = (lock, users)
                else:
                    del self._locks[key]


# Step results: immutable Arrow tables. Keys hold the step's SQL and, for every source in
# its closure, the source, version and the READER's row filter.
_cache: ByteLRUCache[Hashable, pa.Table] = ByteLRUCache(DEFAULT_CACHE_BYTES, name="step cache", meter="steps")
_building = _KeyLocks()


def clear_cache() -> None:
    _cache.clear()


def configure(*, cache_bytes: int | None = None) -> None:
    global _cache
    if cache_bytes is not None:
        _cache = ByteLRUCache(cache_bytes, name="step cache", meter="steps")


# ---------------------------------------------------------------------------------------
# Evaluating
# ---------------------------------------------------------------------------------------


def evaluate(
    plan: ProjectPlan,
    step_id: str,
    *,
    budget: sandbox.Budget | None = None,
    cancel: threading.Event | None = None,
    execute: sandbox.ExecuteTables = sandbox.run_tables,
    max_rows: int = MAX_STEP_ROWS,
) -> pa.Table:
    """The step's whole result, as the plan's reader sees it, computing the steps it reads
    first. `execute`: what runs a validated query over named tables (default: here; a query
    worker process with `run_step`). Errors: StepFailed, StepCancelled, query_timeout,
    result_too_large (past `max_rows` or the budget's bytes) ..."""
    evaluation = _Evaluation(plan, budget or sandbox.Budget.starting_now(), cancel, execute, max_rows)
    return evaluation.result(plan.step(step_id), ())


@dataclass(frozen=True)
class _Prepared:
    """A step checked against the plan: its validated query and what it reads."""

    spec: StepSpec
    query: sandbox.ValidatedQuery
    sources: tuple[tuple[str, SourceAccess], ...]  # (name as read, access)
    steps: tuple[tuple[str, StepSpec], ...]


_evaluations = itertools.count()


class _Evaluation:
    def __init__(
        self,
        plan: ProjectPlan,
        budget: sandbox.Budget,
        cancel: threading.Event | None,
        execute: sandbox.ExecuteTables,
        max_rows: int,
    ):
        self.plan = plan
        self.budget = budget
        self.cancel = cancel
        self.execute = execute
        self.max_rows = max_rows
        self._sources = {name.lower(): (name, value) for name, value in plan.sources.items()}
        self._keys: dict[str, Hashable] = {}
        # A live source has no version that changes with its rows: what it read is this
        # evaluation's alone (steps share it within one evaluation, never across two).
        self._live_read = next(_evaluations)
        self._prepared: dict[str, _Prepared] = {}

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise StepCancelled()

    def prepare(self, spec: StepSpec) -> _Prepared:
        prepared = self._prepared.get(spec.id)
        if prepared is not None:
            return prepared
        earlier = self.plan.steps[: self.plan.steps.index(spec)]
        earlier_by_name = {s.name.lower(): s for s in earlier}
        later_ids = {s.id for s in self.plan.steps} - {s.id for s in earlier}
        for dependency in spec.depends_on:
            if dependency in later_ids:
                raise StepFailed(
                    f"Step {spec.name!r} depends on a step that does not come before it ({dependency}); "
                    "a step reads only earlier steps."
                )
        try:
            query = _validated(spec.sql, [*self.plan.sources, *(s.name for s in earlier)])
        except InvalidRequest as exc:
            raise StepFailed(f"Step {spec.name!r} cannot run: {exc.message}") from None
        sources: list[tuple[str, SourceAccess]] = []
        steps: list[tuple[str, StepSpec]] = []
        for name in sorted(referenced_names(query.sql) & query.relations):
            source, step = self._sources.get(name), earlier_by_name.get(name)
            if source is not None and step is not None:
                raise StepFailed(f"Step {spec.name!r} reads {name!r}, which names both a source and a step.")
            if step is not None:
                steps.append((name, step))
                continue
            if source is None:  # validated against these names: cannot happen
                raise StepFailed(f"Step {spec.name!r} reads {name!r}, which is neither a source nor an earlier step.")
            source_name, access = source
            if isinstance(access, str):
                raise StepFailed(f"Step {spec.name!r} reads source {source_name!r}, which it cannot: {access}.")
            if access.version is None:
                raise StepFailed(f"Step {spec.name!r} reads source {source_name!r}, which has no data yet.")
            sources.append((name, access))
        prepared = self._prepared[spec.id] = _Prepared(spec, query, tuple(sources), tuple(steps))
        return prepared

    def key(self, spec: StepSpec, visiting: tuple[str, ...]) -> Hashable:
        """Everything that decides the step's rows: its SQL, the revision, and for every
        source it reads, directly or through earlier steps: source, version, READER's filter."""
        known = self._keys.get(spec.id)
        if known is not None:
            return known
        if spec.id in visiting:
            raise StepFailed(f"Step {spec.name!r} reads itself through {' -> '.join(visiting)}.")
        prepared = self.prepare(spec)
        parts: list[Hashable] = []
        for name, access in prepared.sources:
            version = access.version
            assert version is not None  # prepare refused a source without data
            read: Hashable = self._live_read if access.source is not None and access.source.is_live else None
            parts.append((name, "source", version.source_id, version.id, access.row_filter.cache_key(), read))
        for name, step in prepared.steps:
            parts.append((name, "step", self.key(step, (*visiting, spec.id))))
        key = (spec.id, self.plan.revision, prepared.query.sql, self.max_rows, tuple(parts))
        self._keys[spec.id] = key
        return key

    def result(self, spec: StepSpec, visiting: tuple[str, ...]) -> pa.Table:
        self._check_cancel()
        key = self.key(spec, visiting)
        cached = _cache.get(key)
        if cached is not None:
            return cached
        with _building.hold(key, self.budget.remaining()) as acquired:
            if not acquired:
                raise self.budget.timed_out()
            cached = _cache.get(key)  # computed by another request meanwhile
            return cached if cached is not None else self._compute(spec, key, visiting)

    def _compute(self, spec: StepSpec, key: Hashable, visiting: tuple[str, ...]) -> pa.Table:
        prepared = self.prepare(spec)
        tables: dict[str, pa.Table] = {}
        for name, step in prepared.steps:
            try:
                tables[name] = self.result(step, (*visiting, spec.id))
            except StepFailed as exc:
                raise StepFailed(f"Step {spec.name!r} reads step {step.name!r}, which failed: {exc.message}") from None
        for name, access in prepared.sources:
            tables[name] = data_engine.filtered_table(access)
        self._check_cancel()
        self.budget.check_time()
        try:
            table = self.execute(prepared.query, tables, budget=self.budget, cancel=self.cancel, max_rows=self.max_rows)
        except InvalidRequest as exc:
            raise _step_error(spec, exc) from None
        _cache.put(key, table, table.get_total_buffer_size())  # a result too large to keep is not kept
        return table


def _step_error(spec: StepSpec, exc: InvalidRequest) -> InvalidRequest:
    if exc.code == "run_cancelled":
        return StepCancelled()
    if exc.code == "invalid_query":
        return StepFailed(f"Step {spec.name!r} failed: {exc.message}")
    # Limits (query_timeout, result_too_large, value_too_large, query_too_large) keep their code.
    return type(exc)(exc.code, f"Step {spec.name!r}: {exc.message}", headers=exc.headers)


# ---------------------------------------------------------------------------------------
# Through the query pool, and pages of a result
# ---------------------------------------------------------------------------------------


async def run_step(
    settings_or_limits: Any,
    principal: Principal,
    plan: ProjectPlan,
    step_id: str,
    *,
    cancel: threading.Event | None = None,
    timeout: float | None = None,
) -> pa.Table:
    """`evaluate` in the query pool (as /query runs: admission 429 per key and organization,
    the configured deadline, each query in a worker process under the memory ceiling).
    `settings_or_limits`: Settings (its `query_limits`) or QueryLimits."""
    limits: QueryLimits = getattr(settings_or_limits, "query_limits", settings_or_limits)
    pool = querypool.pool_for(limits)

    def work(budget: sandbox.Budget, execute: sandbox.ExecuteTables) -> pa.Table:
        return evaluate(plan, step_id, budget=budget, cancel=cancel, execute=execute)

    return await pool.run_tables(principal, work, timeout=timeout)


def page_of(table: pa.Table, page: int, page_size: int) -> tuple[list[dict[str, Any]], int, list[str]]:
    """One page of a step's result: JSON-ready rows, the total rows, the column names."""
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise InvalidRequest("invalid_page", "page must be an integer >= 1.")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidRequest("invalid_page_size", f"page_size must be an integer from 1 to {MAX_PAGE_SIZE:,}.")
    rows, columns = sandbox.rows_of(table.slice((page - 1) * page_size, page_size))
    return rows, table.num_rows, columns


__all__ = [
    "MAX_STEP_ROWS",
    "ProjectPlan",
    "StepCancelled",
    "StepFailed",
    "StepSpec",
    "check_name",
    "clear_cache",
    "evaluate",
    "page_of",
    "plan",
    "referenced_names",
    "run_step",
    "validate_step_sql",
]
