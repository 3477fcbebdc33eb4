"""The run options' Setup widgets: each declared in core.options (kind, label, help, limits,
choices, first value), drawn here with its Streamlit call, and its value turned back into the
JobSpec field's through the option's declared checks and conversion."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import streamlit as st

from core.errors import QuantLensError
from core.metrics.latency import default_threads, usable_cpus
from core.options import RunOption, WidgetKind, option, setup_options
from ui import keys

# What only the running server knows: this machine's CPUs (the first value leaves one core
# for the server).
_SERVER_MAXIMUM: dict[str, Callable[[], int]] = {"threads": usable_cpus}
_SERVER_DEFAULT: dict[str, Callable[[], object]] = {"threads": default_threads}


def note_choice(key: str) -> None:
    """The on_change of every widget Setup remembers: the user's new value joins the form as
    they left it, so `setup_form.restore_form` tells a choice from a value Streamlit hands
    back on its own."""
    shown = st.session_state.get(keys.SETUP_FORM_SHOWN)
    if isinstance(shown, dict) and key in st.session_state:
        shown[key] = copy.deepcopy(st.session_state[key])


def first_value(opt: RunOption) -> object:
    """An option's widget value on a fresh form: the declared default, in the widget's terms."""
    assert opt.widget is not None
    if opt.name in _SERVER_DEFAULT:
        return _SERVER_DEFAULT[opt.name]()
    value = opt.form_default
    kind = opt.widget.kind
    if kind is WidgetKind.MULTISELECT:
        return list(value or ())
    if kind in (WidgetKind.TOGGLE, WidgetKind.CHECKBOX):
        return bool(value)
    if kind is WidgetKind.TEXT:
        return "" if value is None else str(value)
    return value


def limits(opt: RunOption) -> tuple[float | None, float | None]:
    assert opt.widget is not None
    high = _SERVER_MAXIMUM[opt.name]() if opt.name in _SERVER_MAXIMUM else opt.widget.maximum
    return opt.widget.minimum, high


def fits(opt: RunOption, value: object) -> bool:
    """Whether a remembered value still fits the option's widget (choices and limits change)."""
    assert opt.widget is not None
    kind = opt.widget.kind
    if kind in (WidgetKind.TOGGLE, WidgetKind.CHECKBOX):
        return isinstance(value, bool)
    if kind is WidgetKind.TEXT:
        return isinstance(value, str)
    if kind in (WidgetKind.RADIO, WidgetKind.SELECT):
        return value in opt.form_choices
    if kind is WidgetKind.MULTISELECT:
        return isinstance(value, list) and all(v in opt.form_choices for v in value)
    number = float if opt.value_type is float else int
    if isinstance(value, bool) or not isinstance(value, number):
        return False
    low, high = limits(opt)
    return (low is None or low <= value) and (high is None or value <= high)


def option_widget(name: str, where: Any = None, **overrides: Any) -> Any:
    """Draw the declared widget of run option `name` in `where` (the page or a column) and
    return its value. `overrides` are what the page decides as it draws (disabled, a help
    that names the data set's size, labels that name the server's cluster)."""
    opt = option(name)
    widget = opt.widget
    if widget is None:
        raise KeyError(f"{name} has no Setup widget")
    where = st if where is None else where
    if widget.key not in st.session_state:  # a page switch dropped it, or it is not remembered
        st.session_state[widget.key] = first_value(opt)
    kwargs: dict[str, Any] = {"key": widget.key, "help": widget.help, **overrides}
    if widget.remember:
        kwargs.update(on_change=note_choice, args=(widget.key,))
    kind = widget.kind
    if kind in (WidgetKind.NUMBER, WidgetKind.SLIDER):
        low, high = limits(opt)
        kwargs = {"min_value": low, "max_value": high, **kwargs}
        if widget.step is not None:
            kwargs.setdefault("step", widget.step)
        elif opt.value_type is int:  # a whole step keeps the value an int (else Streamlit's float)
            kwargs.setdefault("step", 1)
        draw = where.number_input if kind is WidgetKind.NUMBER else where.slider
        return draw(widget.label, **kwargs)
    if kind is WidgetKind.TEXT:
        kwargs = {"placeholder": widget.placeholder, "max_chars": widget.max_chars, **kwargs}
        return where.text_input(widget.label, **kwargs)
    if kind is WidgetKind.TOGGLE:
        return where.toggle(widget.label, **kwargs)
    if kind is WidgetKind.CHECKBOX:
        return where.checkbox(widget.label, **kwargs)
    choices = list(opt.form_choices)
    described = widget.choice_help or {}
    labels = widget.choice_labels
    if labels is not None:
        kwargs.setdefault("format_func", lambda c: labels.get(c, c))
    if kind is WidgetKind.MULTISELECT:
        if described and "help" not in overrides:
            kwargs["help"] = "  \n".join(f"**{c}**: {described[c]}" for c in choices)
        return where.multiselect(widget.label, choices, **kwargs)
    if labels is None and described:
        kwargs.setdefault("format_func", lambda c: f"{c}  ({described.get(c, '')})")
    if kind is WidgetKind.RADIO:
        kwargs.setdefault("horizontal", True)
        return where.radio(widget.label, choices, **kwargs)
    return where.selectbox(widget.label, choices, **kwargs)


def _as_typed(opt: RunOption, value: Any) -> Any:
    """A widget's value as the command line would give it: the CLI's default for a blank text,
    None for a 0 that means "all", a multiselect's choices joined by commas."""
    assert opt.widget is not None
    if opt.widget.zero_is_none and not value:
        return None
    if opt.widget.kind is WidgetKind.TEXT:
        return str(value).strip() or opt.cli_default
    if opt.widget.kind is WidgetKind.MULTISELECT:
        return ",".join(value)
    return value


def job_value(opt: RunOption, value: Any) -> Any:
    """A widget's value checked as the CLI checks it, then turned into the JobSpec field's.

    Raises:
        QuantLensError: the option's declared check refuses it.
    """
    typed = _as_typed(opt, value)
    for check in opt.checks:
        check(opt, typed, {})
    return typed if opt.to_job is None else opt.to_job(typed, {})


def value_of(name: str, raw: Any) -> Any:
    """The JobSpec field's value of option `name`'s widget value `raw`."""
    return job_value(option(name), raw)


def _unplaced(placed: frozenset[str]) -> tuple[RunOption, ...]:
    return tuple(opt for opt in setup_options() if opt.name not in placed and opt.field is not None)


PER_ROW = 3  # options in a row of the form's generated part


def more_options(placed: frozenset[str]) -> dict[str, Any]:
    """Every declared option the page does not place by hand (`placed`), three to a row (a
    checkbox's label does not wrap, and four to a row cut them), checked as the CLI checks it;
    returns their values by JobSpec field (a refused one keeps JobSpec's default, and
    `option_refusal` says so)."""
    values: dict[str, Any] = {}
    declared = _unplaced(placed)
    for start in range(0, len(declared), PER_ROW):
        row = declared[start : start + PER_ROW]
        for column, opt in zip(st.columns(PER_ROW), row, strict=False):
            raw = option_widget(opt.name, column)
            refusal = _refusal(opt, raw)
            if refusal:
                column.error(refusal)
                continue
            assert opt.field is not None
            values[opt.field] = job_value(opt, raw)
    return values


def _refusal(opt: RunOption, raw: Any) -> str | None:
    try:
        job_value(opt, raw)
    except QuantLensError as exc:
        return str(exc)
    return None


def option_refusal(placed: frozenset[str]) -> str | None:
    """The label of the first option `more_options` draws whose value its checks refuse."""
    for opt in _unplaced(placed):
        assert opt.widget is not None
        if opt.widget.key in st.session_state and _refusal(opt, st.session_state[opt.widget.key]):
            return opt.widget.label
    return None
