"""The web UI: server-rendered pages for signing in, API keys, people, admin controls
and the audit log, served by the same server as /api/v1.

`tidegate.web.routes` holds `router` (every page) and `STATIC_DIR` (served at /static:
JS, CSS, and the CSS library that the Makefile copies into static/vendor from npm).
Kept free of imports so that `tidegate.tables` can import `tidegate.web.models`.
"""
