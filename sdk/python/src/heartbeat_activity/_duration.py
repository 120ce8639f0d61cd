"""Kubernetes/Go style duration strings (``500ms``, ``5s``, ``1h30m``), as the Activity's spec uses them."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> timedelta:
    """Parses a Go style duration such as ``1m30s``; raises :class:`ValueError` on anything else."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return timedelta(0)
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}: expected a number and a unit (ns, us, ms, s, m, h)")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return timedelta(seconds=sign * total)


def _trim(value: int, div: int) -> str:
    whole, frac = divmod(value, div)
    if frac == 0:
        return str(whole)
    digits = len(str(div)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def format_duration(d: timedelta) -> str:
    """Formats like Go's ``time.Duration.String()``: ``500ms``, ``5s``, ``1m30s``, ``1h0m0s``."""
    nanos = (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000_000_000:
        if nanos < 1_000:
            return f"{sign}{nanos}ns"
        if nanos < 1_000_000:
            return f"{sign}{_trim(nanos, 1_000)}us"
        return f"{sign}{_trim(nanos, 1_000_000)}ms"
    hours = nanos // 3_600_000_000_000
    minutes = (nanos // 60_000_000_000) % 60
    secs = _trim(nanos % 60_000_000_000, 1_000_000_000)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"
