"""How numbers and quoted text read in report.md and the terminal summary: fixed digits, intervals,
whole worker-seconds, percentages and clipped quotes, each '-' where the value is missing or not finite.

    from overopt.analysis.formatting import num, ci_text
    num(0.12345)              # '0.123'
    ci_text((0.1, 0.25))      # '[0.10, 0.25]'

Used by claims.py (sentences), report_tables.py (table cells), the report's sections and report.py.
"""

from __future__ import annotations

import math


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def num(value, digits: int = 3) -> str:
    """``value`` at ``digits`` decimals."""
    return "-" if _missing(value) else f"{value:.{digits}f}"


def ci_text(interval, digits: int = 2) -> str:
    """A (low, high) interval in brackets; 3 significant digits where a bound reaches 1000 (a bootstrap
    resample whose curve barely turns over)."""
    low, high = interval
    if low is None or not math.isfinite(low):
        return "-"
    if max(abs(low), abs(high)) >= 1000:
        return f"[{low:.3g}, {high:.3g}]"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def whole(value) -> str:
    """Worker-seconds (or any large count), whole, with thousands separators."""
    return "-" if value is None or not math.isfinite(value) else f"{value:,.0f}"


def percent(value) -> str:
    """A share in [0, 1] as a whole percentage."""
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.0f} %"


def yes_no(value) -> str:
    return "yes" if value else "no"


def clip(text, n: int = 100) -> str:
    """``text`` cut to at most ``n`` characters, backquotes turned into quotes (it is shown inside a code span)."""
    text = str(text).replace("`", "'")
    return text if len(text) <= n else text[: n - 3] + "..."
