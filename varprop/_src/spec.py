"""Parse ``NAME[:key=value,...]`` strings without evaluating them.

Used by the command line for ``--init``, ``--expect``, ``--act`` and friends. Values are
read as ``int``, ``float``, ``bool`` (``true``/``false``), ``none`` or a bare string; nothing is
passed to ``eval``, ``exec`` or ``sympify``.
"""

import re

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> int | float | bool | str | None:
    """Read one literal: int, float, ``true``/``false``, ``none``, or a bare word."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if _INT.match(t):
        return int(t)
    if _FLOAT.match(t) or low in ("inf", "+inf", "-inf", "nan"):
        return float(t)
    if _NAME.match(t):
        return t
    raise ValueError(f"cannot read value {text!r}: expected a number, true/false, none or a word")


def parse_spec(spec: str) -> tuple[str, dict[str, int | float | bool | str | None]]:
    """Split ``"he_normal:mode=fan_out,gain=1.5"`` into ``("he_normal", {...})``.

    Raises:
        ValueError: naming the malformed part and the expected form.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty spec {spec!r}: expected NAME[:key=value,...]")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if not _NAME.match(name):
        raise ValueError(f"bad name {name!r} in spec {spec!r}: expected NAME[:key=value,...]")
    kwargs: dict[str, int | float | bool | str | None] = {}
    if sep and not rest.strip():
        raise ValueError(f"spec {spec!r} has ':' but no key=value pairs")
    if rest.strip():
        for part in rest.split(","):
            key, eq, val = part.partition("=")
            key = key.strip()
            if not eq or not _NAME.match(key) or not val.strip():
                raise ValueError(
                    f"bad argument {part!r} in spec {spec!r}: expected key=value, "
                    "e.g. he_normal:mode=fan_out"
                )
            if key in kwargs:
                raise ValueError(f"argument {key!r} given twice in spec {spec!r}")
            kwargs[key] = parse_value(val)
    return name, kwargs
