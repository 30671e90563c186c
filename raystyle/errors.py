"""The error base of raystyle: every error raised on purpose derives from ``RaystyleError``.

It is a ``ValueError`` (callers that caught ValueError keep working). The CLI prints a
RaystyleError in one line and exits 2; the HTTP layer maps it to a 4xx JSON body.
"""

from __future__ import annotations


class RaystyleError(ValueError):
    """A bad input or setting, named with what is allowed: shown to the user in one line."""
