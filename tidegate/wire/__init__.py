"""The wire contract: every JSON shape the API sends, as pydantic models, and their builders.

The API declares them as `response_model`s (so /api/openapi.json describes real responses),
and the CLI prints the same shapes. Each model builds from the ORM object or snapshot it
shows (`KeyOut.of(key)`), so one place decides what leaves the server. The field order is
the order on the wire; `None` is sent as null, and a field absent from a shape is absent
from the model (detail-only fields live on a subclass). The official Querri SDK parses these
responses (tests/test_wire_sdk.py checks the schemas against its models).

Imports pydantic and the ORM models only: no FastAPI, no data engine.
"""
