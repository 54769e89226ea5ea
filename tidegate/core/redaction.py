"""What may be shown of a text that could carry one of tidegate's secrets.

Our secrets have their own formats (credentials.keyformat: `qk_...`; embed sessions: `es_...`;
dashboard share links: `dl_...`). A path may carry one (`DELETE /embed/sessions/{token}`, a
link's `/links/{token}`, or a key pasted into a URL by mistake), and so may a leak report's
URL: whatever is logged or audited of such a text goes through `redact_secrets`. Here, below
every domain package, so that each can use the one pattern.
"""

from __future__ import annotations

import re

_SECRET = re.compile(r"\b(qk|es|dl)_[A-Za-z0-9_\-]{8,}")


def redact_secrets(text: str) -> str:
    """`text` with every qk_/es_/dl_ secret replaced by its kind and `[redacted]`."""
    if "_" not in text:  # the common path: nothing to look for
        return text
    return _SECRET.sub(lambda match: match.group(1) + "_[redacted]", text)
