"""Settings: the one reader of the environment, and the README's table of it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import tidegate
from tidegate import limits
from tidegate.api.app import create_app
from tidegate.config import QUERY_LIMIT_VARIABLES, Settings, load_settings
from tidegate.data import connectors, egress, engine, sandbox
from tidegate.limits import LIMIT_VARIABLES, MiB

README = Path(tidegate.__file__).parent.parent / "README.md"


@pytest.fixture
def database_url(sqlite_url):
    return sqlite_url  # nothing here touches the database


class RecordingEnviron(dict):
    """An environment that notes every variable asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)

    def __getitem__(self, name):
        self.asked.add(name)
        return super().__getitem__(name)

    def __contains__(self, name):
        self.asked.add(name)
        return super().__contains__(name)


def readme_table() -> dict[str, str]:
    """`variable` -> default, from the README's Configuration table."""
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\| `(TIDEGATE_[A-Z0-9_]+)` \| ([^|]+) \| [^|]+ \|", line.strip())
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} twice in the README"
            rows[match.group(1)] = match.group(2).strip()
        elif line.startswith("| `"):
            pytest.fail(f"README configuration row not of the form | `VARIABLE` | default | meaning |: {line}")
    return rows


def number_of(text: str) -> float:
    """A README default as a number: `30`, 1,000, 64 KiB, 1 GiB."""
    text = text.strip("`")
    units = {"KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}
    match = re.fullmatch(r"([\d,.]+)(?: (KiB|MiB|GiB))?", text)
    assert match, f"not a number: {text!r}"
    return float(match.group(1).replace(",", "")) * units.get(match.group(2), 1)


def defaults(tmp_path) -> tuple[Settings, set[str]]:
    environ = RecordingEnviron(TIDEGATE_HOME=str(tmp_path / "home"))
    return load_settings(environ), environ.asked


def test_the_readme_table_lists_exactly_the_variables_settings_reads(tmp_path):
    _, asked = defaults(tmp_path)
    assert set(readme_table()) == asked


def test_the_readme_table_shows_the_defaults_settings_uses(tmp_path):
    settings, _ = defaults(tmp_path)
    table = readme_table()
    numeric = {variable: getattr(settings.limits, name) for name, variable in LIMIT_VARIABLES.items()}
    numeric |= {variable: getattr(settings.query_limits, name) for name, variable in QUERY_LIMIT_VARIABLES.items()}
    numeric |= {
        "TIDEGATE_DATA_CACHE_BYTES": settings.data.cache_bytes,
        "TIDEGATE_DATA_THREADS": settings.data.threads,
        "TIDEGATE_CONNECTOR_STATEMENT_TIMEOUT_SECONDS": settings.data.connector_statement_timeout_seconds,
        "TIDEGATE_GC_INTERVAL_SECONDS": settings.data.gc_interval_seconds,
        "TIDEGATE_GC_MIN_AGE_SECONDS": settings.data.gc_min_age_seconds,
    }
    for variable, value in numeric.items():
        assert number_of(table[variable]) == value, variable
    assert table["TIDEGATE_HOME"] == "`./.tidegate`"
    assert table["TIDEGATE_DATABASE_URL"] == "SQLite under `TIDEGATE_HOME`"
    assert settings.database_url == f"sqlite:///{tmp_path / 'home' / 'tidegate.db'}"
    assert table["TIDEGATE_PEPPER"] == table["TIDEGATE_SESSION_KEY"] == "generated into `secrets.json`"
    assert (tmp_path / "home" / "secrets.json").exists()
    for variable in ("TIDEGATE_REDIS_URL", "TIDEGATE_TRUSTED_PROXIES", "TIDEGATE_SQLITE_CONNECTOR_DIRS"):
        assert table[variable] == "unset", variable
    assert (settings.redis_url, settings.trusted_proxies, settings.data.sqlite_connector_dirs) == (None, (), ())
    assert (table["TIDEGATE_LOG_LEVEL"], settings.log_level) == ("`info`", "info")
    assert (table["TIDEGATE_ACCESS_LOG"], settings.access_log) == ("`1`", True)
    assert (table["TIDEGATE_AUDIT_FSYNC"], settings.audit_fsync) == ("`0`", False)
    assert (table["TIDEGATE_EPOCH_LEASE_SECONDS"], settings.epoch_lease_seconds) == ("`2`", 2.0)
    assert (table["TIDEGATE_DATA_MEMORY_LIMIT"], settings.data.memory_limit) == ("`2GB`", "2GB")
    assert (table["TIDEGATE_CONNECTOR_ALLOW"], settings.data.connector_allow) == ("`public`", "")
    assert egress.parse_allowlist(settings.data.connector_allow) == egress.parse_allowlist("public")


def test_values_set_are_the_values_used(tmp_path):
    settings = load_settings(
        {
            "TIDEGATE_HOME": str(tmp_path / "home"),
            "TIDEGATE_DATA_CACHE_BYTES": "1000",
            "TIDEGATE_DATA_THREADS": "3",
            "TIDEGATE_DATA_MEMORY_LIMIT": "512MB",
            "TIDEGATE_CONNECTOR_STATEMENT_TIMEOUT_SECONDS": "7",
            "TIDEGATE_GC_INTERVAL_SECONDS": "30",
            "TIDEGATE_GC_MIN_AGE_SECONDS": "2.5",
            "TIDEGATE_SQLITE_CONNECTOR_DIRS": f"{tmp_path / 'a'}::{tmp_path / 'b'}",
            "TIDEGATE_CONNECTOR_ALLOW": "10.0.0.0/8",
            "TIDEGATE_AUDIT_FSYNC": "1",
            "TIDEGATE_ACCESS_LOG": "0",
            "TIDEGATE_LOG_LEVEL": "debug",
            "TIDEGATE_MAX_JSON_BYTES": "2048",
            "TIDEGATE_QUERY_WORKERS": "2",
        }
    )
    assert settings.data == dataclasses.replace(
        settings.data,
        cache_bytes=1000,
        threads=3,
        memory_limit="512MB",
        connector_statement_timeout_seconds=7,
        gc_interval_seconds=30.0,
        gc_min_age_seconds=2.5,
        sqlite_connector_dirs=(tmp_path / "a", tmp_path / "b"),
        connector_allow="10.0.0.0/8",
    )
    assert (settings.audit_fsync, settings.access_log, settings.log_level) == (True, False, "debug")
    assert (settings.limits.max_json_bytes, settings.query_limits.workers) == (2048, 2)


@pytest.mark.parametrize(
    "variable,value",
    [
        ("TIDEGATE_DATA_CACHE_BYTES", "1GB"),  # was a ValueError traceback at import
        ("TIDEGATE_DATA_CACHE_BYTES", "-1"),
        ("TIDEGATE_DATA_THREADS", "two"),
        ("TIDEGATE_DATA_THREADS", "0"),
        ("TIDEGATE_CONNECTOR_STATEMENT_TIMEOUT_SECONDS", "5m"),  # was silently the default
        ("TIDEGATE_CONNECTOR_STATEMENT_TIMEOUT_SECONDS", "0"),  # was silently 1
        ("TIDEGATE_AUDIT_FSYNC", "true"),  # was silently off
        ("TIDEGATE_ACCESS_LOG", "yes"),  # was silently off
        ("TIDEGATE_LOG_LEVEL", "INFO"),  # was a KeyError in uvicorn
        ("TIDEGATE_MAX_JSON_BYTES", "16MiB"),
        ("TIDEGATE_QUERY_TIMEOUT_SECONDS", "0"),
    ],
)
def test_a_value_that_cannot_be_read_stops_start_up_naming_the_variable(tmp_path, variable, value):
    with pytest.raises(SystemExit, match=variable) as stopped:
        load_settings({"TIDEGATE_HOME": str(tmp_path / "home"), variable: value})
    assert repr(value) in str(stopped.value)
    assert not (tmp_path / "home").exists()  # refused before anything was created


def test_a_malformed_connector_allowlist_stops_the_app_and_allows_nothing(settings):
    with pytest.raises(ValueError, match="TIDEGATE_CONNECTOR_ALLOW"):
        create_app(dataclasses.replace(settings, data=dataclasses.replace(settings.data, connector_allow="a b")))
    assert egress.allow_policy() == ()
    create_app(settings)
    assert egress.allow_policy() == egress.parse_allowlist("public")


def test_create_app_hands_the_settings_to_the_modules(settings, tmp_path):
    data = dataclasses.replace(
        settings.data,
        cache_bytes=5 * MiB,
        threads=3,
        memory_limit="700MB",
        connector_statement_timeout_seconds=7,
        sqlite_connector_dirs=(tmp_path / "sqlite",),
        connector_allow="10.0.0.0/8",
    )
    configured = dataclasses.replace(
        settings, data=data, limits=dataclasses.replace(settings.limits, max_json_bytes=1234)
    )
    try:
        create_app(configured)
        assert (engine._options["threads"], engine._options["memory_limit"]) == (3, "700MB")
        assert engine._cache.max_bytes == 5 * MiB
        assert connectors.statement_timeout_seconds() == 7
        assert connectors._allowed_sqlite_dirs() == [tmp_path / "sqlite"]
        assert egress.allow_policy() == egress.parse_allowlist("10.0.0.0/8")
        assert limits.get_limits().max_json_bytes == 1234
        assert sandbox._server_home == str(settings.home)
    finally:
        create_app(settings)  # back to the defaults for the next test of this worker
        engine.configure(cache_bytes=engine.DEFAULT_CACHE_BYTES)
    assert limits.get_limits() == limits.Limits() and connectors.statement_timeout_seconds() == 300


def test_no_module_reads_the_environment_but_config():
    """Settings reads every variable; the one exception is the audit shipper's internal flag
    from `tidegate serve` to its workers (audit.shipper.ENV_FLAG), which no operator sets.
    Setting a variable for a child process (`os.environ[...] = ...`) reads nothing."""
    package = Path(tidegate.__file__).parent
    readers = re.compile(r"os\.environ|os\.getenv|getenv\(")
    writer = re.compile(r"os\.environ\[[^\]]+\]\s*=[^=]")
    found = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path != package / "config.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if readers.search(writer.sub("", line)) and "ENV_FLAG" not in line and not line.lstrip().startswith("#")
    ]
    assert found == []


@pytest.mark.parametrize("raw, wanted", [("0", 0.0), ("0.5", 0.5), ("10", 10.0), ("", 2.0)])
def test_the_epoch_lease_length_is_read(tmp_path, raw, wanted):
    settings = load_settings({"TIDEGATE_HOME": str(tmp_path / "home"), "TIDEGATE_EPOCH_LEASE_SECONDS": raw})
    assert settings.epoch_lease_seconds == wanted


@pytest.mark.parametrize("raw", ["two", "0.1", "-1", "61", "nan"])
def test_a_bad_epoch_lease_length_stops_the_start(tmp_path, raw):
    with pytest.raises(SystemExit, match="TIDEGATE_EPOCH_LEASE_SECONDS"):
        load_settings({"TIDEGATE_HOME": str(tmp_path / "home"), "TIDEGATE_EPOCH_LEASE_SECONDS": raw})
