"""Expected page text computed here, from the report's numbers, never with `ui.fmt`: a test
that formats its expectation with the code under test cannot catch that code's mistakes."""

from __future__ import annotations

import math
import re

_MARKDOWN_PUNCTUATION = set("\\`*_{}[]()#+-.!|<>~$:")


def pct2(value: float) -> str:
    """A percentage as the pages show it with two decimals: 97.25 -> "97.25 %"."""
    return f"{value:.2f} %"


def interval(bounds: list[float]) -> str:
    """A 95 % interval as the pages show it: [91.2, 99.1] -> "91.2–99.1 %"."""
    return f"{bounds[0]:.1f}–{bounds[1]:.1f} %"


def megabytes(size_bytes: int) -> str:
    """MB = 10^6 bytes; three decimals below 1 MB (0.650 MB), two above (1.20 MB)."""
    value = size_bytes / 1_000_000
    return f"{value:.3f} MB" if value < 1 else f"{value:.2f} MB"


def shown_as_text(shown: str, raw: str) -> bool:
    """True when markdown `shown` renders as the literal `raw`: every markdown character is
    escaped with a backslash, and removing those backslashes gives `raw` back."""
    out = []
    i = 0
    while i < len(shown):
        ch = shown[i]
        if ch == "\\" and i + 1 < len(shown) and shown[i + 1] in _MARKDOWN_PUNCTUATION:
            out.append(shown[i + 1])
            i += 2
            continue
        if ch in _MARKDOWN_PUNCTUATION:
            return False  # an unescaped markdown character would be interpreted
        out.append(ch)
        i += 1
    return "".join(out) == raw


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts, by the binomial sum."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def contains_escaped(line: str, raw: str) -> bool:
    """True when `line` holds `raw` with its markdown characters backslash-escaped."""
    pattern = "".join(
        "\\\\" + re.escape(ch) if ch in _MARKDOWN_PUNCTUATION else re.escape(ch) for ch in raw
    )
    return re.search(pattern, line) is not None
