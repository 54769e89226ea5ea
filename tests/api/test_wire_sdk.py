"""/api/openapi.json against the official Querri SDK: every field the SDK reads from a
tidegate response is in that response's declared schema, with a type the SDK accepts.

Which SDK model parses which response is read from the SDK's own source (querri/resources),
not written down here: a call `self._http.<method>("<path>")` followed by
`return <Model>.model_validate(resp.json())`, a `SyncCursorPage(self._http, "<path>", <Model>)`,
or `[<Model>.model_validate(s) for s in body.get("data", [])]`. The SDK also calls routes
tidegate does not serve (projects, dashboards) or answers 501 (chats, views, library, ask): those are skipped, and the test
checks that every resource tidegate does serve was found.
"""

from __future__ import annotations

import ast
import copy
import inspect
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import querri.resources
import querri.types
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tidegate.api.app import create_app
from tidegate.config import Settings
from tidegate.data import storage
from tidegate.wire import audit, common, dashboards, keys, orgs, policies, projects, shares, sources, usage, users

# SDK fields a tidegate response leaves out on purpose: (SDK model, field alias) -> where it is
# sent instead. Checked below: each is indeed absent from some response the SDK parses.
ABSENT_BY_DESIGN = {
    ("User", "created"): "only PUT /users/external/{id} says whether it created the user",
    ("Policy", "user_ids"): "the user ids are on a single policy, not in lists",
    ("Dashboard", "widgets"): "only on a single dashboard (the SDK: 'only on detail responses')",
    ("Dashboard", "filters"): "only on a single dashboard (the SDK: 'only on detail responses')",
    ("Project", "steps"): "only GET /projects/{id} computes its steps (under the reader's access)",
    ("Project", "chats_store"): "chats are an AI feature tidegate does not have (501)",
}
# The SDK resources that parse tidegate responses with a model; each must be found.
EXPECTED_MODELS = {
    "ApiKey",
    "ApiKeyCreated",
    "User",
    "UserDeleteResponse",
    "ExternalIdDeleteResponse",
    "AuditEvent",
    "File",
    "Policy",
    "PolicyUpdateResponse",
    "PolicyDeleteResponse",
    "PolicyAssignResponse",
    "PolicyRemoveUserResponse",
    "PolicyReplaceResponse",
    "ResolvedAccess",
    "SourceColumns",
    "Source",
    "QueryResult",
    "DataPage",
    "DataWriteResult",
    "ShareEntry",
    "OrgUsageReport",
    "UserUsageReport",
    "Dashboard",
    "DashboardUpdateResponse",
    "DashboardRefreshResponse",
    "DashboardRefreshStatus",
    "Project",
    "StepSummary",
    "AddSourceResponse",
    "ProjectRunResponse",
    "ProjectRunStatus",
    "ProjectCancelResponse",
}


@dataclass(frozen=True)
class Parsed:
    """The SDK parses the response of `method path` as `model`: whole, per page item, or per `data` item."""

    method: str
    path: str  # as the SDK writes it, without /api/v1; f-string fields as {}
    model: str
    shape: str  # "object", "page" or "data"


def _path_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _http_call(node: ast.AST) -> tuple[str, str] | None:
    """`self._http.get(<path>, ...)` (awaited or not) -> ("GET", path)."""
    if isinstance(node, ast.Await):
        node = node.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "_http"
        and node.args
    ):
        path = _path_of(node.args[0])
        if path is not None:
            return node.func.attr.upper(), path
    return None


def _validated_model(node: ast.AST) -> str | None:
    """`<Model>.model_validate(...)` -> Model."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "model_validate"
        and isinstance(node.func.value, ast.Name)
    ):
        return node.func.value.id
    return None


def sdk_parsed_responses() -> set[Parsed]:
    found: set[Parsed] = set()
    for source_file in Path(querri.resources.__file__).parent.glob("*.py"):
        tree = ast.parse(source_file.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            call: tuple[str, str] | None = None
            for node in ast.walk(function):
                if isinstance(node, ast.Assign) and (c := _http_call(node.value)):
                    call = c
                elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                    "SyncCursorPage",
                    "AsyncCursorPage",
                ):
                    path = _path_of(node.args[1])
                    model = node.args[2]
                    if path and isinstance(model, ast.Name):
                        found.add(Parsed("GET", path, model.id, "page"))
                elif isinstance(node, ast.Return) and call and (model := _validated_model(node.value)):
                    found.add(Parsed(*call, model, "object"))
                elif isinstance(node, ast.ListComp) and call and (model := _validated_model(node.elt)):
                    iterated = ast.unparse(node.generators[0].iter)
                    if "data" in iterated:
                        found.add(Parsed(*call, model, "data"))
    return found


def sdk_models() -> dict[str, type[BaseModel]]:
    models = {}
    for module in vars(querri.types).values():
        if inspect.ismodule(module) and module.__name__.startswith("querri.types."):
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, BaseModel) and value.__module__ == module.__name__:
                    models[name] = value
    return models


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    saved = storage._data_dir
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(
            home=Path(home),
            database_url=f"sqlite:///{home}/unused.db",
            redis_url=None,
            pepper=secrets.token_hex(32).encode(),
            session_key=secrets.token_hex(32).encode(),
            trusted_proxies=(),
        )
        try:
            response = TestClient(create_app(settings)).get("/api/openapi.json")
        finally:
            storage._data_dir = saved
    assert response.status_code == 200
    return response.json()


# -- schema reading ------------------------------------------------------------------------


def _resolve(schema: dict, document: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name] if "components" in document else document["$defs"][name]
    return schema


def _types(schema: dict, document: dict) -> set[str] | None:
    """The JSON types a schema admits; None: any."""
    schema = _resolve(schema, document)
    if "anyOf" in schema:
        kinds: set[str] = set()
        for option in schema["anyOf"]:
            option_kinds = _types(option, document)
            if option_kinds is None:
                return None
            kinds |= option_kinds
        return kinds
    if "type" in schema:
        return {schema["type"]} if isinstance(schema["type"], str) else set(schema["type"])
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return {{str: "string", bool: "boolean", int: "integer"}.get(type(v), "object") for v in values}
    if "properties" in schema:
        return {"object"}
    return None


def _accepts(sdk_types: set[str] | None, ours: set[str] | None) -> bool:
    if sdk_types is None:
        return True
    if ours is None:
        return False
    if "number" in sdk_types:
        sdk_types = sdk_types | {"integer"}
    return ours <= sdk_types


def _operation(openapi: dict, parsed: Parsed) -> dict | None:
    pattern = re.escape(parsed.path).replace(r"\{\}", r"\{[^/]+\}")
    for path, operations in openapi["paths"].items():
        if re.fullmatch("/api/v1" + pattern, path) and parsed.method.lower() in operations:
            return operations[parsed.method.lower()]
    return None


def _item_schema(openapi: dict, operation: dict, shape: str) -> dict:
    success = [status for status in operation["responses"] if status.startswith("2")]
    assert len(success) == 1, success
    schema = _resolve(operation["responses"][success[0]]["content"]["application/json"]["schema"], openapi)
    if shape == "object":
        return schema
    envelope = set(schema["properties"])
    assert envelope == ({"data", "has_more", "next_cursor"} if shape == "page" else {"data"}), envelope
    return _resolve(schema["properties"]["data"]["items"], openapi)


# -- the tests -----------------------------------------------------------------------------


def served(openapi: dict) -> list[tuple[Parsed, dict]]:
    """The SDK's parsed responses tidegate serves (an AI feature's 501 parses nothing)."""
    return [
        (p, op)
        for p in sorted(sdk_parsed_responses(), key=repr)
        if (op := _operation(openapi, p)) is not None and "not implemented" not in op.get("tags", [])
    ]


def test_the_sdk_parses_what_tidegate_serves(openapi):
    """The reading of the SDK's source found every resource tidegate serves (else the checks
    below would pass by checking nothing)."""
    assert {p.model for p, _ in served(openapi)} >= EXPECTED_MODELS


def problems_in(openapi: dict) -> tuple[list[str], set[tuple[str, str]]]:
    """What the SDK would read but the schema does not promise; and the ABSENT_BY_DESIGN seen."""
    models = sdk_models()
    absent_seen = set()
    problems = []
    for parsed, operation in served(openapi):
        model = models[parsed.model]
        ours = _item_schema(openapi, operation, parsed.shape)
        sdk_schema = model.model_json_schema(by_alias=True)
        where = f"{parsed.method} {parsed.path} as {parsed.model}"
        for name, field in model.model_fields.items():
            alias = field.alias or name
            if alias not in ours["properties"]:
                if (parsed.model, alias) in ABSENT_BY_DESIGN:
                    absent_seen.add((parsed.model, alias))
                else:
                    problems.append(f"{where}: no field {alias!r}")
                continue
            if field.is_required() and alias not in ours.get("required", []):
                problems.append(f"{where}: {alias!r} is required by the SDK, optional here")
            sdk_types = _types(sdk_schema["properties"][alias], sdk_schema)
            our_types = _types(ours["properties"][alias], openapi)
            if not _accepts(sdk_types, our_types):
                problems.append(f"{where}: {alias!r} is {our_types} here, the SDK accepts {sdk_types}")
    return problems, absent_seen


def test_every_field_the_sdk_reads_is_declared_with_a_type_it_accepts(openapi):
    problems, absent_seen = problems_in(openapi)
    assert not problems, "\n".join(problems)
    assert absent_seen == set(ABSENT_BY_DESIGN), "stale ABSENT_BY_DESIGN entries"


def test_the_check_sees_a_missing_field_and_a_wrong_type(openapi):
    broken = copy.deepcopy(openapi)
    schemas = broken["components"]["schemas"]
    del schemas["KeyOut"]["properties"]["key_prefix"]
    schemas["SourceWritten"]["properties"]["row_count"] = {"type": "string"}
    schemas["UserOut"]["required"].remove("email")
    problems, _ = problems_in(broken)
    assert "GET /keys/{} as ApiKey: no field 'key_prefix'" in problems
    assert any(p.startswith("POST /sources/{}/rows as DataWriteResult: 'row_count' is {'string'}") for p in problems)
    assert "GET /users/{} as User: 'email' is required by the SDK, optional here" in problems


def test_every_wire_field_is_always_sent():
    """The wire models have no defaults: every field of a shape is on the wire (null when
    empty), so what the schema lists is what a client receives. The one exception: an
    error's retry_after, on 503s only."""
    optional = [
        f"{model.__name__}.{name}"
        for module in (common, keys, users, orgs, sources, policies, audit, usage, dashboards, projects, shares)
        for model in vars(module).values()
        if inspect.isclass(model) and issubclass(model, BaseModel) and model.__module__ == module.__name__
        for name, field in model.model_fields.items()
        if not field.is_required()
    ]
    assert optional == ["ErrorDetail.retry_after"]
