"""Number formatting shared by every page: sizes, percentages, milliseconds, escaped text."""

from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def text(value: object) -> str:
    """User-provided text made safe for st.markdown/st.caption: markdown characters escaped."""
    return _MD_SPECIAL.sub(r"\\\1", str(value))


def mb(size_bytes: float | None) -> str:
    """Bytes as megabytes (10^6), or an em dash when unknown."""
    if size_bytes is None:
        return "—"
    value = float(size_bytes) / 1e6
    return f"{value:.3f} MB" if value < 1 else f"{value:.2f} MB"


def pct(value: float | None, *, digits: int = 1) -> str:
    """A 0..100 percentage with a % sign, or an em dash."""
    return "—" if value is None else f"{float(value):.{digits}f} %"


def ms(value: float | None) -> str:
    """Milliseconds with a precision that suits the magnitude, or an em dash."""
    if value is None:
        return "—"
    v = float(value)
    if v < 1:
        return f"{v:.3f} ms"
    return f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def ci(bounds: list[float] | tuple[float, float] | None) -> str:
    """A 95 % interval as "lo–hi %"."""
    if not bounds or bounds[0] is None or bounds[1] is None:
        return "—"
    return f"{float(bounds[0]):.1f}–{float(bounds[1]):.1f} %"


MINUS = "\u2212"  # the minus sign the tables use; a hyphen reads as a dash


def change(value_pct: float) -> str:
    """A relative change with its true sign: "−86.1 %" (smaller), "+5.0 %" (larger).

    The minus is U+2212, as in the tables: a metric card given this text must set its arrow
    and colour itself (ui.widgets.change_metric_style), since Streamlit reads them from a
    leading ASCII "-"."""
    return f"{float(value_pct):+.1f} %".replace("-", MINUS)


def code(value: object) -> str:
    """User-provided text as an inline code span (no escaping inside; backticks neutralised)."""
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def count(n: int, noun: str) -> str:
    """`1 image`, `2 images` (core.reporting.report.counted)."""
    from core.reporting.report import counted

    return counted(n, noun)
