"""Where the embedded demos' models and data live in the workspace (built by core.engine.demo_models).

Two demo models share one data set: the small MobileNet-style classifier (built on first launch)
and a standard MobileNetV2-0.35 at 96x96 (built after it, in the background), whose int8
variant loses enough agreement for the per-layer diagnosis to have something to show.

Only paths: the dashboard, the CLI and the launcher ask whether the demo is ready without
importing the engine that builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.inputs.rundir import workspace_home


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo's model and data live."""

    root: Path
    saved_model: Path
    keras_model: Path
    data_csv: Path
    labels: Path

    def ready(self) -> bool:
        return (
            (self.saved_model / "saved_model.pb").is_file()
            and self.keras_model.is_file()
            and self.data_csv.is_file()
        )


def demo_root(home: Path | None = None) -> Path:
    return (home or workspace_home()) / "demo"


def demo_paths(home: Path | None = None, *, root: Path | None = None) -> DemoPaths:
    """The small demo's paths (nothing is built or imported here)."""
    base = root or demo_root(home)
    return DemoPaths(
        root=base,
        saved_model=base / "model" / "saved_model",
        keras_model=base / "model" / "digits.keras",
        data_csv=base / "data" / "digits.csv",
        labels=base / "data" / "labels.txt",
    )


MOBILENET_V2_FOLDER = "mobilenetv2"


def mobilenet_demo_paths(home: Path | None = None, *, root: Path | None = None) -> DemoPaths:
    """The MobileNetV2-0.35 demo's paths: its own model folder inside the demo, the small
    demo's data (the same digits, the same held-out split)."""
    small = demo_paths(home, root=root)
    base = small.root / MOBILENET_V2_FOLDER
    return DemoPaths(
        root=base,
        saved_model=base / "saved_model",
        keras_model=base / "digits_mobilenetv2.keras",
        data_csv=small.data_csv,
        labels=small.labels,
    )
