"""The Querri API's AI features, which tidegate does not have: chats, views, the library
and asking a source a question. Every method the Querri SDK sends there answers 501
`not_implemented` in the error envelope, after the credential is checked (401 first), so
that a client learns what it is missing instead of a 404 that looks like a wrong URL.
Nothing here pretends to work."""

from __future__ import annotations

import inspect

from fastapi import APIRouter, Depends

from tidegate.api.deps import authenticated
from tidegate.api.inputs import InputRoute
from tidegate.errors import NotImplementedFeature
from tidegate.wire.common import ErrorOut

router = APIRouter(tags=["not implemented"], route_class=InputRoute)
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

# (path, what it is, methods); `{rest:path}` stands for everything below.
FEATURES = (
    ("/projects/{project_id}/chats", "Project chats", ("GET", "POST")),
    ("/projects/{project_id}/chats/{rest:path}", "Project chats", ALL_METHODS),
    ("/views", "Views", ("GET", "POST")),
    ("/views/{rest:path}", "Views", ALL_METHODS),
    ("/library/{rest:path}", "The library", ALL_METHODS),
    ("/sources/{source_id}/ask", "Asking a source a question", ("POST",)),
)


def refusal(feature: str) -> NotImplementedFeature:
    return NotImplementedFeature(
        "not_implemented",
        f"{feature} is an AI feature, and tidegate does not do AI features (chats, views, the library, "
        "ask). It governs keys, data, sources, projects, dashboards, sharing and usage; see "
        '"What tidegate does not do" in its README.',
    )


def _handler(path: str, feature: str):
    async def not_implemented(**_path_parameters: str) -> None:
        raise refusal(feature)

    # The path's parameters, declared (as FastAPI reads a signature) so the OpenAPI schema
    # describes the operation whole.
    names = [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]
    not_implemented.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str) for name in names]
    )
    return not_implemented


for _path, _feature, _methods in FEATURES:
    for _method in _methods:
        _name = "not_implemented" + _path.replace("/", "_").replace("{", "").replace("}", "").replace(":path", "")
        router.add_api_route(
            _path,
            _handler(_path, _feature),
            methods=[_method],
            name=f"{_name}_{_method.lower()}",
            status_code=501,
            response_model=ErrorOut,
            dependencies=[Depends(authenticated)],
            summary=f"{_feature}: not implemented (501)",
            description=refusal(_feature).message,
        )
