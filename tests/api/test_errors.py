"""The error envelope everywhere: unknown routes, wrong methods, validation, crashes."""

from __future__ import annotations


def test_unknown_route(client, org):
    r = client.get("/api/v1/does-not-exist", headers=org.headers())
    assert r.status_code == 404
    assert r.json() == {"error": {"type": "not_found_error", "code": "route_not_found", "message": "No such endpoint."}}


def test_wrong_method(client, org):
    r = client.put("/api/v1/keys", headers=org.headers())
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_validation_error_names_the_field(client, org):
    r = client.post(
        "/api/v1/keys",
        json={"name": "x", "scopes": ["data:read"], "rate_limit_per_minute": "fast"},
        headers=org.headers(),
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "rate_limit_per_minute" in err["message"]


def test_unhandled_error_is_a_clean_500_with_request_id(client, org, monkeypatch):
    from tidegate.credentials import service

    def explode(*args, **kwargs):
        raise RuntimeError("boom: secret internals")

    monkeypatch.setattr(service, "list_keys", explode)
    r = client.get("/api/v1/keys", headers=org.headers())
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "internal_error" and "boom" not in err["message"]
    assert r.headers["x-request-id"] in err["message"]
