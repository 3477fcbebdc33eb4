"""Read a run directory back into a small read-only view for the dashboard and reports."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import QuantLensError
from core.inputs import rundir
from core.inputs.paths import resolve_inside
from core.reporting.report import near_chance
from core.reporting.runmodel import RunReport, read_report, report_from
from core.reporting.sections.variant import Variant

REFERENCE = "reference"  # file-name stem of the reference model's arrays


@dataclass(frozen=True, eq=False)
class RunResults:
    """Everything one run wrote, read lazily: the report eagerly, tables and arrays on demand.

    Instances are immutable from the outside; `_memo` only remembers what was already read so a
    page that asks twice does not read the disk twice.
    """

    run_dir: Path
    report: RunReport
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # Callers may hand in a report.json dict; readers always see the typed report.
        if not isinstance(self.report, RunReport):
            object.__setattr__(self, "report", report_from(self.report))

    # ---- report fields -------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.report.run.id or self.run_dir.name

    @property
    def run_name(self) -> str:
        return self.report.run.name

    @property
    def reference(self) -> Mapping[str, Any]:
        return self.report.reference

    @property
    def dataset(self) -> Mapping[str, Any]:
        return self.report.dataset

    @property
    def options(self) -> Mapping[str, Any]:
        return self.report.options

    @property
    def environment(self) -> Mapping[str, Any]:
        return self.report.environment

    @property
    def threshold_pct(self) -> float:
        """The agreement a variant needs to pass, in % (the default when not recorded)."""
        return self.report.threshold_pct

    @property
    def variants(self) -> list[Variant]:
        return list(self.report.variants)

    def variant_names(self, *, finished_only: bool = False) -> list[str]:
        """Variant names in report order; with `finished_only`, only those whose status is done."""
        return [v.name for v in self.variants if not finished_only or v.result.finished_ok]

    def variant(self, name: str) -> Variant:
        """One variant of the run.

        Raises:
            QuantLensError: no variant of that name in this run.
        """
        found = self.report.variant(name)
        if found is not None:
            return found
        raise QuantLensError(
            f"run {self.run_id} has no variant {name!r}; pick one of "
            f"{', '.join(self.variant_names()) or 'none'}"
        )

    @property
    def num_classes(self) -> int:
        n = self.reference.get("num_classes")
        if n:
            return int(n)
        return len(self.class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names from the report, else labels.txt, else the indices as text."""
        if "class_names" not in self._memo:
            names = self.dataset.get("class_names")
            if not names:
                labels = self.run_dir / rundir.LABELS
                if labels.is_file():
                    names = [
                        ln.strip()
                        for ln in labels.read_text(encoding="utf-8").splitlines()
                        if ln.strip()
                    ]
            n = int(self.reference.get("num_classes") or 0)
            if not names or (n and len(names) != n):
                names = [str(i) for i in range(n)]
            self._memo["class_names"] = tuple(str(x) for x in names)
        names_t: tuple[str, ...] = self._memo["class_names"]
        return names_t

    def class_name(self, index: int | None) -> str:
        """The display name of a class index ("?" when unknown)."""
        if index is None or index < 0:
            return "?"
        names = self.class_names
        return names[index] if index < len(names) else str(index)

    def class_label(self, index: int | None) -> str:
        """A class as the pages list it: "3: cat", or "7" when the name is the index itself
        (a data set without class names), never "7: 7"."""
        name = self.class_name(index)
        return name if name == str(index) or index is None or index < 0 else f"{index}: {name}"

    @property
    def reference_near_chance(self) -> bool:
        """True when the original is not clearly above the labels' majority class
        (core.reporting.report.near_chance): preprocessing or labels are suspect."""
        return near_chance(self.reference)

    # ---- per-sample tables ---------------------------------------------------------------
    @property
    def samples(self) -> pd.DataFrame:
        """samples.csv: index, relpath, label, ref_top1, ref_top1_prob, ref_margin (empty if absent)."""
        if "samples" not in self._memo:
            path = self.run_dir / rundir.SAMPLES
            df = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=SAMPLE_COLUMNS)
            self._memo["samples"] = df
        out: pd.DataFrame = self._memo["samples"]
        return out

    def variant_samples(self, name: str) -> pd.DataFrame:
        """samples.csv joined with `<variant>.samples.csv` on `index` (empty if not written yet).

        Adds `row` (position in the probability arrays) and `abs_top1_prob_delta`. Every row
        and column: a page that filters, sorts or counts reads `variant_summary`, and the rows
        it shows with `variant_rows`.
        """
        key = f"samples:{name}"
        if key not in self._memo:
            base = self.samples.reset_index(drop=True).copy()
            base["row"] = np.arange(len(base))
            path = rundir.variant_samples_path(self.run_dir, self.report.files_of(name))
            if not path.is_file() or base.empty:
                self._memo[key] = _empty_joined(base)
            else:
                self._memo[key] = _joined(base, pd.read_csv(path))
        out: pd.DataFrame = self._memo[key]
        return out

    def variant_summary(self, name: str) -> pd.DataFrame:
        """The columns of `variant_samples` that filters, sorts and aggregates need, for every
        sample, without the text columns (relpath, label) or the unused ones: a page on a
        50,000-sample run keeps a few MB, not the whole table. Read once per file version."""
        path = rundir.variant_samples_path(self.run_dir, self.report.files_of(name))
        key = f"summary:{name}:{_mtime(path)}:{_mtime(self.run_dir / rundir.SAMPLES)}"
        if key not in self._memo:
            wanted = set(SUMMARY_COLUMNS)
            base = self._sample_columns(lambda c: c in wanted)
            base["row"] = np.arange(len(base))
            if not path.is_file() or base.empty:
                table = _empty_joined(base)
            else:
                table = _joined(base, pd.read_csv(path, usecols=lambda c: c in wanted))
            self._memo[key] = table[[c for c in table.columns if c in wanted or c == "row"]]
        out: pd.DataFrame = self._memo[key]
        return out

    def variant_rows(self, name: str, rows: Sequence[int]) -> pd.DataFrame:
        """Every column of `variant_samples` for the given row positions only, in that order:
        the files are scanned, but only those rows are parsed and kept (one gallery page)."""
        wanted = {int(r) for r in rows}
        if not wanted:
            return self.variant_summary(name).iloc[0:0]

        def skip(line: int) -> bool:  # line 0 is the header
            return line > 0 and (line - 1) not in wanted

        base = self._sample_columns(lambda _c: True, skiprows=skip)
        base["row"] = sorted(wanted)[: len(base)]
        path = rundir.variant_samples_path(self.run_dir, self.report.files_of(name))
        if not path.is_file() or base.empty:
            return _empty_joined(base)
        table = _joined(base, pd.read_csv(path, skiprows=skip))
        order = {r: i for i, r in enumerate(int(r) for r in rows)}
        return table.sort_values("row", key=lambda col: col.map(order)).reset_index(drop=True)

    def _sample_columns(self, usecols: Callable[[str], bool], **read: Any) -> pd.DataFrame:
        """Some columns (and, with `skiprows`, some rows) of samples.csv, empty if absent."""
        path = self.run_dir / rundir.SAMPLES
        if not path.is_file():
            return pd.DataFrame(columns=[c for c in SAMPLE_COLUMNS if usecols(c)])
        return pd.read_csv(path, usecols=usecols, **read)

    def layer_rows(self, name: str) -> list[dict[str, str]]:
        """The rows of `<name>.layers.csv` (core.engine.diagnose), as written; [] if absent."""
        import csv

        key = f"layers:{name}"
        if key not in self._memo:
            path = rundir.variant_file(self.run_dir, self.report.files_of(name), rundir.LAYERS)
            rows: list[dict[str, str]] = []
            if path.is_file():
                with path.open(encoding="utf-8") as f:
                    rows = list(csv.DictReader(f))
            self._memo[key] = rows
        out: list[dict[str, str]] = self._memo[key]
        return out

    def perturbation_flips(self, name: str) -> dict[str, tuple[int, ...]]:
        """Per perturbation of the flip hunt (`--perturb`), the data set indices of the images
        `name` newly flips under it (`<name>.flip-hunt.csv`); {} when the run has none."""
        import csv

        path = rundir.variant_file(self.run_dir, self.report.files_of(name), rundir.FLIP_HUNT)
        found: dict[str, list[int]] = {}
        if path.is_file():
            with path.open(encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f):
                    found.setdefault(row["perturbation"], []).append(int(row["index"]))
        return {p: tuple(indices) for p, indices in found.items()}

    def layer_details(self, name: str) -> dict[str, Any] | None:
        """`<name>.layer_details.json` (core.engine.layer_details): weight ranges and activation
        histograms per op, keyed by the op's order as text; None when the run has none."""
        diagnosis = self.variant(name).extra.get("diagnosis") or {}
        path = self.run_dir / str(diagnosis.get("details") or "")
        if not diagnosis.get("details") or not path.is_file():
            return None
        try:
            details: dict[str, Any] = rundir.read_json(path)
        except (OSError, ValueError):
            return None
        return details

    # ---- arrays ---------------------------------------------------------------------------
    def probs(self, name: str) -> np.ndarray | None:
        """[N, C] probabilities of `reference` or a variant, memory-mapped; None if absent."""
        key = f"probs:{name}"
        if key not in self._memo:
            path = rundir.probs_path(self.run_dir, self.report.files_of(name))
            self._memo[key] = np.load(path, mmap_mode="r") if path.is_file() else None
        arr: np.ndarray | None = self._memo[key]
        return arr

    def latency(self, name: str) -> np.ndarray | None:
        """Per-invoke milliseconds of `reference` or a variant; None if absent."""
        key = f"latency:{name}"
        if key not in self._memo:
            path = rundir.latency_path(self.run_dir, self.report.files_of(name))
            self._memo[key] = np.load(path) if path.is_file() else None
        arr: np.ndarray | None = self._memo[key]
        return arr

    # ---- images ---------------------------------------------------------------------------
    @property
    def dataset_root(self) -> Path | None:
        """The folder sample `relpath`s are relative to (a CSV data set: the CSV's folder)."""
        return rundir.dataset_root(dict(self.dataset))

    def image_path(self, relpath: str) -> Path | None:
        """Absolute path of a sample image, or None if missing or outside the data set root."""
        root = self.dataset_root
        if root is None:
            return None
        p = resolve_inside(root, str(relpath))
        return p if p is not None and p.is_file() else None


SAMPLE_COLUMNS = ["index", "relpath", "label", "ref_top1", "ref_top1_prob", "ref_margin"]
# What the pages filter, sort and count by (see `RunResults.variant_summary`).
SUMMARY_COLUMNS = (
    "index",
    "ref_top1",
    "ref_margin",
    "tfl_top1",
    "agree",
    "max_abs_delta",
    "top1_prob_delta",
    "abs_top1_prob_delta",
    "cause",
)


def _joined(base: pd.DataFrame, var: pd.DataFrame) -> pd.DataFrame:
    """samples.csv rows joined with a variant's rows on `index`, with the derived columns."""
    df = base.merge(var, on="index", how="inner", validate="one_to_one")
    df["agree"] = df["agree"].astype(str).str.lower().isin(["true", "1", "1.0"])
    df["abs_top1_prob_delta"] = df["top1_prob_delta"].abs()
    # "" where the variant agrees, or when the run has no pivot to split against.
    df["cause"] = df["cause"].fillna("").astype(str) if "cause" in df else ""
    return df


def _empty_joined(base: pd.DataFrame) -> pd.DataFrame:
    return base.iloc[0:0].assign(
        tfl_top1=[],
        tfl_top1_prob=[],
        agree=[],
        max_abs_delta=[],
        top1_prob_delta=[],
        kl=[],
        abs_top1_prob_delta=[],
        cause=[],
    )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def load_results(run_dir: Path) -> RunResults:
    """Read `run_dir/report.json` (any schema) into a RunResults.

    Raises:
        QuantLensError: the run has no report yet, or the report is not valid JSON.
    """
    return RunResults(run_dir=Path(run_dir), report=read_report(run_dir))


def report_mtime(run_dir: Path) -> float:
    """Modification time of the run's report.json (0.0 if absent): the cache key of its view."""
    try:
        return (Path(run_dir) / rundir.REPORT).stat().st_mtime
    except OSError:
        return 0.0


SORTS = {
    "largest |Δp| of the original's class": ("abs_top1_prob_delta", False),
    "largest max |Δp|": ("max_abs_delta", False),
    "smallest original margin": ("ref_margin", True),
    "sample order": ("index", True),
}


def pick_samples(
    df: pd.DataFrame,
    *,
    at_risk_margin: float | None = None,
    ref_class: int | None = None,
    flip: tuple[int, int] | None = None,
    sort: str = "largest |Δp| of the original's class",
    only: Collection[int] | None = None,
) -> pd.DataFrame:
    """The gallery's rows of a `variant_samples` table.

    Args:
        df: a `RunResults.variant_samples` table.
        at_risk_margin: None shows disagreements; a number shows samples that still agree but
            whose original margin (top-1 − top-2) is below it.
        ref_class: keep only samples whose original top-1 is this class.
        flip: keep only disagreements original class -> TFLite class (a flip-matrix cell).
        sort: a key of `SORTS`.
        only: keep only these data set indices, agreeing or not (the images a runtime flips
            against XNNPACK: under XNNPACK they may well agree with the original).

    Returns:
        The filtered, sorted rows.
    """
    if df.empty:
        return df
    if only is not None:
        out = df[df["index"].isin(list(only))]
    elif at_risk_margin is None:
        out = df[~df["agree"]]
    else:
        out = df[df["agree"] & (df["ref_margin"] < at_risk_margin)]
    if ref_class is not None:
        out = out[out["ref_top1"] == ref_class]
    if flip is not None:
        out = out[(out["ref_top1"] == flip[0]) & (out["tfl_top1"] == flip[1]) & ~out["agree"]]
    column, ascending = SORTS.get(sort, ("index", True))
    return out.sort_values([column, "index"], ascending=[ascending, True], kind="stable")


PER_CLASS_COLUMNS = ["class", "n", "agree", "agreement_pct", "ci95_low_pct", "ci95_high_pct"]


def per_class_agreement(df: pd.DataFrame) -> pd.DataFrame:
    """Top-1 agreement per reference class (the original's top-1), worst class first.

    Each row holds the class index, n (samples the original put in that class), how many of
    them the variant agrees on, the agreement in percent and its 95 % Wilson interval. Worst
    first means lowest agreement; among equals the class with more samples comes first (more
    evidence of the same loss), then the lower class index.

    Args:
        df: a `RunResults.variant_samples` table (needs `ref_top1` and `agree`).
    """
    from core.metrics.agreement import wilson_interval

    if df.empty:
        return pd.DataFrame(columns=PER_CLASS_COLUMNS)
    grouped = df.groupby(df["ref_top1"].astype(int))["agree"].agg(["size", "sum"])
    rows = []
    for cls, (n, agree) in grouped.iterrows():
        lo, hi = wilson_interval(int(agree), int(n))
        rows.append(
            {
                "class": int(cls),
                "n": int(n),
                "agree": int(agree),
                "agreement_pct": 100.0 * int(agree) / int(n),
                "ci95_low_pct": 100.0 * lo,
                "ci95_high_pct": 100.0 * hi,
            }
        )
    out = pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)
    return out.sort_values(
        ["agreement_pct", "n", "class"], ascending=[True, False, True], kind="stable"
    ).reset_index(drop=True)
