"""Three-way merge of report.json: a long-lived writer's changes onto the file as it is now.

The worker keeps report.json in memory for the whole run and saves it after every step.
Another writer may change the file meanwhile (a rename from History, a re-score queueing a
variant, the supervisor closing a variant); writing the worker's copy whole would restore
what it read. Instead, under the report lock, the changes other writers made since the
worker's last save (`base` -> `theirs`) are applied to the worker's copy (`mine`), and that
is written. When both changed the same value, the worker's wins: it measured it.
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


def merge_into(mine: dict[str, Any], base: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Apply in place to `mine` every change `theirs` made to `base` that `mine` did not.

    Dicts merge key by key, and lists of named entries (report.json's `variants`) entry by
    entry. `mine` is changed in place, so references the caller holds into it stay live.
    """
    for key in list(dict.fromkeys([*base, *theirs])):
        b, t = base.get(key, _MISSING), theirs.get(key, _MISSING)
        if t == b:
            continue  # nobody else touched it
        m = mine.get(key, _MISSING)
        # Containers merge in place first, so a stage's reference into `mine` stays live.
        if isinstance(m, dict) and isinstance(b, dict) and isinstance(t, dict):
            merge_into(m, b, t)
        elif _named_list(m) and _named_list(b) and _named_list(t):
            _merge_named(m, b, t)
        elif m == b:  # only theirs changed it
            if t is _MISSING:
                mine.pop(key, None)
            else:
                mine[key] = t
        # else: both changed the same value; mine stands.


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value)


def _merge_named(mine: list[Any], base: list[Any], theirs: list[Any]) -> None:
    """Merge lists of entries keyed by `name` in place: theirs' new entries are appended,
    entries both still hold merge, an entry they removed goes unless mine changed it."""
    base_by = {e["name"]: e for e in base}
    theirs_by = {e["name"]: e for e in theirs}
    kept: list[Any] = []
    for entry in mine:
        name = entry["name"]
        b, t = base_by.get(name), theirs_by.get(name)
        if b is not None and t is None:
            if entry == b:
                continue  # they removed it and mine did not change it
        elif b is not None and t is not None:
            merge_into(entry, b, t)
        kept.append(entry)
    mine_names = {e["name"] for e in mine}
    kept += [e for e in theirs if e["name"] not in mine_names and e["name"] not in base_by]
    mine[:] = kept
