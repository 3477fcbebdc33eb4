"""Where the embedded demos' models and data live in the workspace (built by
core.engine.demo_models and core.engine.outlier_demo).

Three demo models share one data set: the small MobileNet-style classifier (built on first
launch), a conv net with one outlier activation channel at 16x16 (built next, in seconds: a
trained model rescaled without changing its function, whose int8 collapses for that documented
reason, so cause, fix ladder and an integer-only fix have something to show) and a standard
MobileNetV2-0.35 at 96x96 (built last, in the background), whose int8 variant loses a few
points.

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
    # Runs use the .keras file rather than the SavedModel (the outlier demo: the fix ladder's
    # cross-layer equalization edits Keras layers, which a SavedModel's graph does not have).
    prefer_keras: bool = False

    @property
    def run_model(self) -> Path:
        """The model file a run of this demo is given."""
        return self.keras_model if self.prefer_keras else self.saved_model

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


OUTLIER_FOLDER = "outlier"


def outlier_demo_paths(home: Path | None = None, *, root: Path | None = None) -> DemoPaths:
    """The outlier-channel demo's paths: its own model folder inside the demo, the small demo's
    data (core.engine.outlier_demo builds it)."""
    small = demo_paths(home, root=root)
    base = small.root / OUTLIER_FOLDER
    return DemoPaths(
        root=base,
        saved_model=base / "saved_model",
        keras_model=base / "digits_outlier.keras",
        data_csv=small.data_csv,
        labels=small.labels,
        prefer_keras=True,
    )
