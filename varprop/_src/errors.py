"""Errors that are not findings: the input cannot be used.

Every such failure raises :class:`InputError` (a ``ValueError``) with one line naming the bad
value and what is allowed, and a ``kind`` that says which input was bad. The CLI turns it into
exit code 2 (and ``{"error": message, "kind": kind}`` under ``--json``); exit code 1 is kept for
"the law disagrees".

Kinds: ``"usage"`` (an option or argument value), ``"data"`` (a data file or array),
``"resources"`` (the run would not fit in memory), ``"numerics"`` (a value outside what
float64 derivations can represent), ``"io"`` (an output path, or the compilation-cache
directory), ``"model"`` (a model to check that cannot be built, called on the given inputs,
or has no layer to check).

The CLI reports one more kind, ``"internal"``, for an exception that is not an ``InputError``
(a bug: exit 2 with ``internal error: <Type>: <message>``; ``--debug`` shows the traceback). It
is not in :data:`KINDS` because no input is at fault.
"""

from __future__ import annotations

KINDS = ("usage", "data", "resources", "numerics", "io", "model")


class InputError(ValueError):
    """The input cannot be used; ``kind`` is one of :data:`KINDS`.

    Example:
        >>> e = InputError("--batch must be >= 2, got 1", kind="usage")
        >>> e.kind, str(e)
        ('usage', '--batch must be >= 2, got 1')
    """

    def __init__(self, message: str, kind: str = "usage", param: str | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown error kind {kind!r}; allowed: {', '.join(KINDS)}")
        super().__init__(message)
        self.kind = kind
        #: The parameter at fault when the message starts with its name (the CLI shows
        #: it as its option, ``max_seeds`` -> ``--max-seeds``).
        self.param = param
