"""The Setup page's sections: model, data, preprocessing, variants, options and the Run button."""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from core.errors import QuantLensError
from core.history import stale_uploads
from core.inputs import uploads
from core.inputs.demo_paths import DemoPaths, demo_paths, mobilenet_demo_paths, outlier_demo_paths
from core.inputs.paths import allowed_roots, existing_under_roots
from core.inputs.rundir import workspace_home, write_json_atomic
from core.jobs import launch as jobs
from core.metrics.preset_check import judge_presets, preset_summary
from core.options import RunOption, setup_options
from core.reporting.tracking import dashboard_uri_refusal, resolve_uri
from core.types import (
    Dataset,
    IOType,
    JobSpec,
    Mode,
    ModelSignature,
    Preset,
    VariantSpec,
    parse_sweep_sizes,
    variants_for_backend,
)
from ui import cache, fmt, keys, option_widgets, runs
from ui.option_widgets import option_widget, value_of

# The operator's switch for trusted mode (off unless set to 1); users then confirm per run.
TRUSTED_ENV = "QUANTLENS_ALLOW_TRUSTED"
# The operator's Ray cluster (HOST:PORT); when set, Setup offers to evaluate on it.
RAY_ADDRESS_ENV = "QUANTLENS_RAY_ADDRESS"
MODEL_SOURCES = ("Demo model", "Path on the server", "Upload")
DEMO_MODELS = ("Small (32×32)", "MobileNetV2-0.35 (96×96)", "Outlier channel (16×16)")
DATA_SOURCES = ("Demo data", "CSV file on the server", "Image folder on the server", "Upload .zip")

# The run options' widgets are declared in core.options and drawn by ui.option_widgets. The
# sections below place these by hand; every other declared widget is drawn in the Options
# section by `option_widgets.more_options`.
PLACED_OPTIONS = frozenset(
    {
        "modes",
        "backend",
        "select_tf_ops",
        "preprocess",
        "calibration_samples",
        "samples",
        "threads",
        "min_agreement",
        "verdict",
        "name",
        "trusted",
        "mlflow",
        "calibration_data",
        "calibration_overlap",
        "calibration_sweep",
        "sweep_seeds",
        "engine",
    }
)
# A run's options by JobSpec field name, as `launch` passes them to JobSpec.
RunOptions = dict[str, Any]

# The form's choices, kept in the workspace so a reload (a new session) or a page switch
# (Streamlit drops the state of widgets it does not draw) opens Setup as the user left it.
# Options whose widget is not `remember`ed (run name, trusted mode) are per run.
FORM_FILE = "setup-form.json"
_SOURCES = {keys.SETUP_MODEL_SOURCE: MODEL_SOURCES, keys.SETUP_DATA_SOURCE: DATA_SOURCES}
_TEXTS = (keys.SETUP_MODEL_PATH, keys.SETUP_DATA_PATH, keys.SETUP_LABELS_PATH)
_UPLOADED = (keys.SETUP_MODEL_UPLOADED, keys.SETUP_DATA_UPLOADED)
# The int8 I/O type is part of a variant's name, not an option of its own; the preset check
# remembers the model and data it was checked for, so a reload keeps the user's choice
# instead of pre-selecting the check's again.
_FORM_ONLY_DEFAULTS: dict[str, object] = {keys.SETUP_INT8_IO: IOType.INT8.value}


def _remembered_options() -> dict[str, RunOption]:
    """The declared options whose widget Setup remembers, by session key."""
    return {
        opt.widget.key: opt
        for opt in setup_options()
        if opt.widget is not None and opt.widget.remember
    }


def remembered_keys() -> tuple[str, ...]:
    """Every session key the form keeps across reloads."""
    return (
        *_SOURCES,
        *_TEXTS,
        *_UPLOADED,
        keys.SETUP_PRESET_CHECKED,
        *_FORM_ONLY_DEFAULTS,
        *_remembered_options(),
    )


def _form_path() -> Path:
    return workspace_home() / FORM_FILE


def _saved_form() -> dict[str, object]:
    try:
        saved = json.loads(_form_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _usable(key: str, value: object) -> bool:
    """Whether a remembered value still fits its widget (options and limits can change)."""
    if key in _SOURCES:
        return value in _SOURCES[key]
    if key in _TEXTS:
        return isinstance(value, str)
    if key in _UPLOADED:
        return isinstance(value, str) and uploads.is_stored_upload(value)
    if key == keys.SETUP_PRESET_CHECKED:
        return isinstance(value, str)
    if key == keys.SETUP_INT8_IO:
        return value in {t.value for t in IOType}
    opt = _remembered_options().get(key)
    return opt is not None and option_widgets.fits(opt, value)


def restore_form() -> None:
    """Reopen the form as the user left it.

    Every key takes its value in the form as this session left it (its last Setup render and
    the choices since): a page switch that lands as a run ends can get a widget's first value
    back from Streamlit, and the modes the user had removed came back. Keys still unset take
    the choices saved in the workspace (a reload is a new session), else the defaults.
    """
    state = st.session_state
    for key, value in dict(state.get(keys.SETUP_FORM_SHOWN) or {}).items():
        if key not in state or state[key] != value:
            state[key] = copy.deepcopy(value)
    saved = _saved_form()
    declared = _remembered_options()
    for key in remembered_keys():
        if key in state:
            continue
        if key in saved and _usable(key, saved[key]):
            state[key] = saved[key]
        elif key in _FORM_ONLY_DEFAULTS:
            state[key] = _FORM_ONLY_DEFAULTS[key]
        elif key in declared:
            state[key] = option_widgets.first_value(declared[key])


def _remembered(key: str) -> dict[str, Any]:
    """A remembered widget's key, and the callback that notes the user's choices in it."""
    return {"key": key, "on_change": option_widgets.note_choice, "args": (key,)}


def remember_form() -> None:
    """Save the form's current choices to the workspace when they changed."""
    state = st.session_state
    current = {key: state[key] for key in remembered_keys() if key in state}
    state[keys.SETUP_FORM_SHOWN] = copy.deepcopy(current)
    if current != _saved_form():
        # A read-only workspace only loses the convenience, never the run.
        with contextlib.suppress(OSError):
            write_json_atomic(_form_path(), current)


def trusted_allowed() -> bool:
    """Whether this server lets users run a model's own code (an explicit operator setting)."""
    return os.environ.get(TRUSTED_ENV) == "1"


def trusted_requested() -> bool:
    """Trusted mode for this run: allowed by the server, switched on, and confirmed."""
    state = st.session_state
    return (
        trusted_allowed()
        and bool(state.get(keys.SETUP_TRUSTED))
        and bool(state.get(keys.SETUP_TRUSTED_CONFIRM))
    )


@dataclass(frozen=True)
class Picked:
    """A resolved model or data path, or the one-line reason there is none.

    `extract_dir` is set for an uploaded zip data set: where Setup extracts it for the preview
    (the run extracts its own copy into its folder, through the same function).
    """

    path: str | None
    error: str | None = None
    extract_dir: str | None = None


def demo_ready() -> bool:
    """Start the demo build on first launch and report whether the demo is usable."""
    try:
        state, message = jobs.demo_build_state()
        if state == "missing":
            jobs.start_demo_build()
            state, message = "building", "starting"
    except QuantLensError as exc:
        st.error(str(exc))
        return False
    if state == "ready":
        return True
    if state == "failed":
        st.error(f"The demo could not be built: {message}. Use a model and data on the server.")
        return False
    _demo_wait()
    # Wait for the demo (so the form opens preselected and one click on Run works), unless
    # the user wants to point at their own model meanwhile.
    if not st.session_state.get(keys.SETUP_SKIP_DEMO):
        if st.button(
            "Use my own model meanwhile",
            key=keys.SETUP_SKIP_DEMO_BUTTON,
            icon=":material/folder_open:",
        ):
            st.session_state[keys.SETUP_SKIP_DEMO] = True
            st.rerun()
        st.stop()
    return False


@st.fragment(run_every=2.0)
def _demo_wait() -> None:
    state, message = jobs.demo_build_state()
    if state == "ready":
        st.rerun(scope="app")
    steps = jobs.demo_build_steps()
    now = message or "starting"
    # Expanded, with each step so far: a collapsed box said only "Building…" for a minute.
    with runs.status_box(
        f"Building the demo model and data set (first launch only): {now}…", state="running"
    ):
        fraction = steps[-1][0] if steps else 0.0
        st.progress(min(1.0, max(0.0, fraction)), text=fmt.text(now))
        for _, step in steps[:-1]:
            st.caption(f":material/check: {fmt.text(step)}")


def _demo_model_choice() -> DemoPaths:
    """The small demo, or another demo model once its background build is ready.

    Until then the small one stays preselected and the MobileNetV2 build's status shows here.
    """
    state, message = jobs.demo_build_state(which=jobs.MOBILENET)
    if state != "ready":
        _mobilenet_status(state, message)
    outlier_ready = _outlier_ready()
    choices = [DEMO_MODELS[0]]
    choices += [DEMO_MODELS[1]] if state == "ready" else []
    choices += [DEMO_MODELS[2]] if outlier_ready else []
    if len(choices) == 1:
        return demo_paths()
    choice = st.radio(
        "Demo model",
        choices,
        key=keys.SETUP_DEMO_MODEL,
        horizontal=True,
        help="All are trained on the same digits. On the small one int8 flips almost nothing; "
        "on MobileNetV2-0.35 it loses a few percent, which the Layers page can diagnose; on the "
        "outlier-channel model (a trained conv net rescaled without changing its function, so "
        "one activation channel spans 400× the others) int8 collapses, and the Layers page "
        "shows the cause and the fixes.",
    )
    if choice == DEMO_MODELS[1]:
        return mobilenet_demo_paths()
    return outlier_demo_paths() if choice == DEMO_MODELS[2] else demo_paths()


def _outlier_ready() -> bool:
    """Whether the outlier-channel demo is built; a workspace whose small demo predates it
    builds it now (seconds, in the background), unless first launches are kept to the small
    demo (the test suite's setting)."""
    state, _ = jobs.demo_build_state(which=jobs.OUTLIER)
    if state == "missing" and os.environ.get(jobs.DEMO_CHAIN_ENV, "1") != "0":
        # On failure the small demo stays the choice; the build's log says why.
        with contextlib.suppress(QuantLensError, OSError):
            jobs.start_demo_build(which=jobs.OUTLIER, then_mobilenet=False)
    return state == "ready"


def _mobilenet_status(state: str, message: str) -> None:
    if state == "building":
        _mobilenet_building()
        return
    if state == "failed":
        st.warning(
            f"The MobileNetV2-0.35 demo could not be built: {fmt.text(message)}. "
            "The small demo is unaffected.",
            icon=":material/error:",
        )
        label = "Retry the MobileNetV2-0.35 demo build"
    else:
        label = "Build the MobileNetV2-0.35 demo (a few minutes, in the background)"
    if st.button(label, key=keys.SETUP_BUILD_MOBILENET, icon=":material/model_training:"):
        try:
            jobs.start_demo_build(which=jobs.MOBILENET)
        except (QuantLensError, OSError) as exc:
            st.error(f"Could not start the MobileNetV2-0.35 demo build: {exc}")
        else:
            st.rerun()


@st.fragment(run_every=2.0)
def _mobilenet_building() -> None:
    state, message = jobs.demo_build_state(which=jobs.MOBILENET)
    if state != "building":
        st.rerun(scope="app")
    st.info(
        f"Building the MobileNetV2-0.35 demo in the background: {fmt.text(message)}. "
        "The small demo is ready to run meanwhile.",
        icon=":material/hourglass_top:",
    )


def _picked_upload(
    up: st.runtime.uploaded_file_manager.UploadedFile | None, remembered: str
) -> Picked:
    """The file just uploaded, else the one uploaded earlier (a reload empties the uploader);
    a refused file name is the one-line error."""
    if up is not None:
        try:
            saved = uploads.save_upload(up.getvalue(), up.name)
        except QuantLensError as exc:
            st.session_state.pop(remembered, None)
            return Picked(None, str(exc))
        st.session_state[remembered] = str(saved)
        return Picked(str(saved))
    earlier = st.session_state.get(remembered)
    if not (isinstance(earlier, str) and uploads.is_stored_upload(earlier)):
        return Picked(None)
    st.caption(
        f"Using {fmt.code(Path(earlier).name)}, uploaded earlier; upload a file to replace it."
    )
    return Picked(earlier)


def forget_refused_upload(what: str) -> None:
    """Forget an uploaded model ("model") or data set ("data") the form refused, when it is the
    source in use, so a reload does not bring the file back with its error. The uploader still
    holds the file in this session, so the error stays on the page until it is replaced."""
    source, upload, remembered = {
        "model": (keys.SETUP_MODEL_SOURCE, MODEL_SOURCES[2], keys.SETUP_MODEL_UPLOADED),
        "data": (keys.SETUP_DATA_SOURCE, DATA_SOURCES[3], keys.SETUP_DATA_UPLOADED),
    }[what]
    if st.session_state.get(source) == upload:
        st.session_state.pop(remembered, None)


def _server_path(raw: str, *, what: str) -> Picked:
    """Check a typed path against the server's allowed folders before anything reads it."""
    if not raw.strip():
        return Picked(None, None)
    try:
        return Picked(str(existing_under_roots(raw.strip(), allowed_roots(), what=what)))
    except QuantLensError as exc:
        return Picked(None, str(exc))


def model_section(demo_ok: bool) -> Picked:
    """Model source radio and its input; returns the chosen model path."""
    st.subheader("1 · Model")
    options = MODEL_SOURCES if demo_ok else MODEL_SOURCES[1:]
    if st.session_state.get(keys.SETUP_MODEL_SOURCE) not in options:
        st.session_state.pop(keys.SETUP_MODEL_SOURCE, None)
    source = st.radio(
        "Model source", options, horizontal=True, **_remembered(keys.SETUP_MODEL_SOURCE)
    )
    if source == "Demo model":
        paths = _demo_model_choice()
        p = paths.run_model if paths.run_model.exists() else paths.keras_model
        st.caption(f"Embedded demo classifier: {fmt.code(p)}")
        return Picked(str(p))
    if source == "Path on the server":
        raw = st.text_input(
            "SavedModel folder or .keras file",
            **_remembered(keys.SETUP_MODEL_PATH),
            placeholder="/models/my_classifier or /models/net.keras",
        )
        return _server_path(raw, what="model")
    up = st.file_uploader(
        "A .keras file, or a .zip holding a SavedModel folder",
        type=["keras", "zip"],
        key=keys.SETUP_MODEL_UPLOAD,
    )
    picked = _picked_upload(up, keys.SETUP_MODEL_UPLOADED)
    if picked.path is None:
        return picked
    try:
        return Picked(str(uploads.model_from_upload(Path(picked.path))))
    except QuantLensError as exc:
        forget_refused_upload("model")
        return Picked(None, str(exc))


def show_signature(sig: ModelSignature) -> None:
    """Input shape/dtype, class count and output kind as four small metrics."""
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Input", f"{sig.height}×{sig.width}×{sig.channels}")
    c2.metric("Input dtype", sig.input_dtype)
    c3.metric("Classes", sig.num_classes)
    binary = sig.raw_columns == 1
    kind = "probabilities" if sig.outputs_probabilities else "logits"
    c4.metric("Output", f"one sigmoid ({kind})" if binary else kind)
    st.caption(
        f"Format {sig.format} · declared input shape {tuple(sig.input_shape)}"
        + (" · its one output p is read as the two classes [1 − p, p]" if binary else "")
        + ("" if sig.outputs_probabilities or binary else " · softmax is applied before comparing")
    )


def data_section(demo_ok: bool) -> tuple[Picked, str | None]:
    """Data source radio and its input; returns the data path and an optional labels file."""
    st.subheader("2 · Data")
    options = DATA_SOURCES if demo_ok else DATA_SOURCES[1:]
    if st.session_state.get(keys.SETUP_DATA_SOURCE) not in options:
        st.session_state.pop(keys.SETUP_DATA_SOURCE, None)
    source = st.radio(
        "Data source", options, horizontal=True, **_remembered(keys.SETUP_DATA_SOURCE)
    )
    labels: str | None = None
    if source == "Demo data":
        p = demo_paths().data_csv
        st.caption(f"Embedded demo data set: {fmt.code(p)}")
        return Picked(str(p)), None
    if source in ("CSV file on the server", "Image folder on the server"):
        is_csv = source.startswith("CSV")
        raw = st.text_input(
            "CSV with filepath,label (paths relative to the CSV)"
            if is_csv
            else "Folder with one sub-folder per class",
            **_remembered(keys.SETUP_DATA_PATH),
            placeholder="/data/val.csv" if is_csv else "/data/val/",
        )
        lab = st.text_input(
            "labels.txt (optional, one class name per line)",
            **_remembered(keys.SETUP_LABELS_PATH),
        )
        data = _server_path(raw, what="data set")
        if lab.strip():
            checked = _server_path(lab, what="labels file")
            if checked.error:
                return Picked(None, checked.error), None
            labels = checked.path
        return data, labels
    up = st.file_uploader(
        "A .zip of a CSV data set or of class folders", type=["zip"], key=keys.SETUP_DATA_UPLOAD
    )
    picked = _picked_upload(up, keys.SETUP_DATA_UPLOADED)
    if picked.path is None:
        return picked, None
    saved = Path(picked.path)
    # The run gets the zip itself and extracts it into its own folder exactly as the CLI does
    # (core.inputs.datasets.data_root_from_zip); the preview extracts it once next to the upload.
    return Picked(str(saved), extract_dir=str(uploads.extracted_dir(saved))), None


def show_dataset(ds: Dataset, sig: ModelSignature | None = None) -> None:
    """Sample count, labels and skipped rows of the chosen data set, and what looks wrong."""
    c1, c2, c3 = st.columns(3)
    c1.metric("Samples", len(ds.samples))
    c2.metric("Skipped", len(ds.skipped))
    c3.metric("Classes", "—" if not ds.class_names else len(ds.class_names))
    if not ds.has_labels:
        st.caption("No labels: accuracy cannot be computed; only agreement is measured.")
    names = ds.class_names or ()
    if ds.has_labels and len(names) == 1:
        st.warning(
            f"The data set has a single class ({fmt.text(names[0])}): accuracy will be "
            "meaningless. Check the layout: one sub-folder per class, or a CSV with filepath,label.",
            icon=":material/warning:",
        )
    elif sig is not None and names and len(names) != sig.num_classes:
        st.warning(
            f"The data set names {len(names)} classes but the model outputs {sig.num_classes}; "
            "check labels.txt or the class folders.",
            icon=":material/warning:",
        )
    if ds.skipped:
        with st.expander(f"{len(ds.skipped)} skipped rows"):
            st.dataframe(
                [{"file": s.relpath, "reason": s.reason} for s in ds.skipped[:500]],
                hide_index=True,
                key="setup.skipped_table",
            )


@dataclass(frozen=True)
class PresetTrial:
    """The original under every preset (core.metrics.preset_check's trial) for one model and
    data set; `inputs` names them, so the best preset is pre-selected once per pair."""

    trial: dict[str, Any]
    inputs: str


def preset_trial(model: Picked, data: Picked, labels: str | None) -> PresetTrial | None:
    """Run the original under every preset on a few dozen of the data set's images (in a
    worker, cached); None, with a caption saying why, when it cannot run."""
    if not (model.path and data.path):
        return None
    try:
        with st.spinner("Checking the preprocessing preset on a few dozen images…"):
            trial = cache.preset_trial(
                model.path,
                data.path,
                labels_file=labels,
                extract_dir=data.extract_dir,
                trusted=trusted_requested(),
            )
    except QuantLensError as exc:
        st.caption(f"The preset could not be checked: {fmt.text(str(exc))}")
        return None
    return PresetTrial(trial, f"{model.path}|{data.path}|{labels or ''}")


def _preselect_best_preset(checked: PresetTrial) -> str | None:
    """Select the preset the check finds clearly better than the current one, once per model
    and data set (a later choice of the user's stands). Returns the preset selected, if any."""
    state = st.session_state
    if state.get(keys.SETUP_PRESET_CHECKED) == checked.inputs:
        return None
    state[keys.SETUP_PRESET_CHECKED] = checked.inputs
    current = str(state.get(keys.SETUP_PRESET) or Preset.MOBILENET_V2.value)
    better = judge_presets(checked.trial, current)["better"]
    if better:
        state[keys.SETUP_PRESET] = better
    return str(better) if better else None


def preset_section(
    sig: ModelSignature | None,
    ds: Dataset | None,
    default: Preset,
    checked: PresetTrial | None = None,
) -> Preset:
    """Preset selectbox (the best preset pre-selected after the check) and three samples as the
    model will see them."""
    st.subheader("3 · Preprocessing")
    if keys.SETUP_PRESET not in st.session_state:
        st.session_state[keys.SETUP_PRESET] = default.value
    switched_from = str(st.session_state[keys.SETUP_PRESET])
    selected = _preselect_best_preset(checked) if checked else None
    preset = Preset(option_widget("preprocess"))
    if checked:
        _say_preset_check(judge_presets(checked.trial, preset.value), selected, switched_from)
    if sig is None or ds is None or not ds.samples:
        st.caption("Pick a model and data to preview the input.")
        return preset
    try:
        from core.inputs.presets import preset_value_range

        lo, hi = preset_value_range(preset)
        shots = cache.preview(
            tuple(s.path for s in ds.samples[:3]), sig.height, sig.width, sig.channels, preset.value
        )
    except QuantLensError as exc:
        st.error(str(exc))
        return preset
    st.caption(
        f"Model input {sig.height}×{sig.width}×{sig.channels}, values in "
        f"[{lo:g}, {hi:g}] for this preset. Three samples as the model sees them:"
    )
    cols = st.columns(6)
    for col, (img, vmin, vmax), sample in zip(cols, shots, ds.samples[:3], strict=False):
        with col:
            st.image(cache.array_png(img), width=cache.THUMB_PX)
            st.caption(f"{fmt.text(Path(sample.relpath).name)}  \nmin {vmin:.2f} · max {vmax:.2f}")
    return preset


def _say_preset_check(check: dict[str, Any], selected: str | None, switched_from: str) -> None:
    """One line: the preset the check pre-selected and why, a warning when the preset chosen
    is clearly worse than another, else each preset's figure."""
    figures = ", ".join(preset_summary(check))
    what = "accuracy" if check["basis"] == "accuracy" else "mean top-1 probability"
    if check["advice"]:
        st.warning(fmt.text(check["advice"]), icon=":material/warning:")
    elif selected:
        st.info(
            f"Preset check: {fmt.code(selected)} was selected instead of "
            f"{fmt.code(switched_from)}: the original's {what} on {check['n']} images is "
            f"{fmt.text(figures)}.",
            icon=":material/tune:",
        )
    else:
        st.caption(f"Preset check, the original's {what} on {check['n']} images: {figures}.")


def variants_section() -> list[str]:
    """Mode multiselect (+ int8 I/O type); returns variant names such as `int8-uint8`."""
    st.subheader("4 · Variants")
    # Toggle and checkbox labels do not wrap: their columns are wide enough for the label.
    c1, c2, c3 = st.columns([4, 2, 2])
    chosen = option_widget("modes", c1)
    io = c2.selectbox(
        "int8 I/O type",
        [t.value for t in IOType],
        **_remembered(keys.SETUP_INT8_IO),
        disabled="int8" not in chosen,
        help="Tensor type of the int8 model's input and output.",
    )
    select_ops = option_widget("select_tf_ops", c3)
    backend = option_widget("backend")
    names = []
    for m in chosen:
        spec = VariantSpec(
            mode=Mode(m),
            io_type=IOType(io) if m == "int8" else None,
            allow_select_tf_ops=bool(select_ops),
        )
        names.append(spec.name)
    try:
        return list(variants_for_backend(names, str(backend)))
    except QuantLensError as exc:
        st.error(str(exc))
        return []


def tracking_option() -> str | None:
    """MLflow tracking: the workspace store, or a tracking server's http(s) URI on the
    operator's allow-list (QUANTLENS_MLFLOW_ALLOWED); None when off.

    Local stores other than the workspace's are the CLI's (`--mlflow PATH`): a web form does
    not get to write files anywhere on the server, nor send the models to any server.
    """
    c1, c2 = st.columns([1, 3])
    on = option_widget("mlflow", c1)
    if not on:
        return None
    raw = c2.text_input(
        "MLflow tracking server (blank: the workspace store)",
        key=keys.SETUP_MLFLOW_URI,
        placeholder="http://mlflow.example:5000",
    ).strip()
    refusal = tracking_uri_refusal()
    if refusal:
        c2.error(refusal)
        return None
    return resolve_uri(raw)


def tracking_uri_refusal() -> str | None:
    """Why MLflow logging, when on, may not go to the URI given (not an http(s) server on the
    operator's allow-list), else None."""
    if not st.session_state.get(keys.SETUP_MLFLOW):
        return None
    return dashboard_uri_refusal(str(st.session_state.get(keys.SETUP_MLFLOW_URI) or ""))


def engine_option() -> tuple[str, str | None]:
    """(engine, Ray address) for the job: the radio is shown only when the operator set
    QUANTLENS_RAY_ADDRESS; without it every run is local, as before."""
    address = os.environ.get(RAY_ADDRESS_ENV, "").strip()
    if not address:
        return "local", None
    labels = {"local": "Local (this machine)", "ray": f"Ray cluster at {address}"}
    engine = option_widget("engine", format_func=labels.get)
    return ("ray", address) if engine == "ray" else ("local", None)


def options_section(num_samples: int | None) -> RunOptions:
    """Calibration count, evaluation cap, threads, threshold, run name and trusted mode."""
    st.subheader("5 · Options")
    c1, c2, c3, c4 = st.columns(4)
    calib = option_widget("calibration_samples", c1)
    cap = option_widget(
        "samples", c2, help=f"The data set has {num_samples} samples." if num_samples else None
    )
    threads = option_widget("threads", c3)
    threshold = option_widget("min_agreement", c4)
    verdict = option_widget("verdict")
    c5, c6 = st.columns([3, 1])
    name = option_widget("name", c5)
    if trusted_allowed():
        wanted = option_widget("trusted", c6)
        if wanted:
            st.checkbox(
                "I trust this model's author: let it run its own code on this server for this run",
                key=keys.SETUP_TRUSTED_CONFIRM,
            )
            if not trusted_requested():
                st.warning(
                    "Trusted mode is not on until you confirm above; the run uses safe mode."
                )
    else:
        c6.caption(
            "Safe mode: Lambda layers, custom objects, .h5 files and file-system ops are refused. "
            f"An operator can allow trusted mode with {TRUSTED_ENV}=1."
        )
    trusted = trusted_requested()
    mlflow_uri = tracking_option()
    overlap, calibration_data = calibration_source_option()
    sweep_sizes, sweep_seeds = sweep_option()
    engine, ray_address = engine_option()
    declared = option_widgets.more_options(PLACED_OPTIONS)
    return {
        "calibration_samples": value_of("calibration_samples", calib),
        "calibration_overlap": overlap,
        "calibration_data": calibration_data,
        "calibration_sweep": sweep_sizes,
        "sweep_seeds": sweep_seeds,
        "max_samples": value_of("samples", cap),
        "threads": value_of("threads", threads),
        "min_agreement_pct": value_of("min_agreement", threshold),
        "verdict": value_of("verdict", verdict),
        "name": value_of("name", name),
        "trusted": bool(trusted),
        "mlflow_uri": mlflow_uri,
        "engine": engine,
        "ray_address": ray_address,
        **declared,
    }


def calibration_source_option() -> tuple[bool, str | None]:
    """(calibration images may also be evaluated, a separate calibration set's path or None)."""
    c1, c2 = st.columns([2, 3])  # the checkbox's label does not wrap
    raw = str(option_widget("calibration_data", c2)).strip()
    overlap = option_widget("calibration_overlap", c1, disabled=bool(raw))
    if calibration_path_refused():
        c2.error(f"{raw} does not exist; give the path of a CSV, folder or .zip of images.")
        return False, None
    return (bool(overlap) and not raw), value_of("calibration_data", raw)


def sweep_option() -> tuple[tuple[int, ...], int]:
    """(calibration sizes to sweep, seeds per size): `--calibration-sweep` and `--sweep-seeds`;
    no sizes, no sweep."""
    c1, c2 = st.columns([3, 1])
    option_widget("calibration_sweep", c1)
    seeds = option_widget("sweep_seeds", c2)
    try:
        return _sweep_sizes(), int(seeds)
    except QuantLensError as exc:
        c1.error(f"{exc}.")
        return (), int(seeds)


def _sweep_sizes() -> tuple[int, ...]:
    return parse_sweep_sizes(str(st.session_state.get(keys.SETUP_SWEEP) or ""))


def sweep_refused() -> bool:
    """True when the sweep sizes are not whole numbers of at least 1."""
    try:
        _sweep_sizes()
    except QuantLensError:
        return True
    return False


def option_refusal() -> str | None:
    """The label of an option drawn by `more_options` whose value is refused, else None."""
    return option_widgets.option_refusal(PLACED_OPTIONS)


def calibration_path_refused() -> bool:
    """True when a separate calibration set is named that does not exist."""
    raw = str(st.session_state.get(keys.SETUP_CALIBRATION_DATA) or "").strip()
    return bool(raw) and not Path(raw).exists()


def launch(
    model: str,
    data: str,
    labels: str | None,
    variants: list[str],
    preset: Preset,
    options: RunOptions,
) -> None:
    """Create and launch the run, make it the selected one, and rerun the page."""
    spec = JobSpec(
        model_path=model,
        data_path=data,
        variants=tuple(variants),
        preset=preset,
        labels_file=labels,
        **options,
    )
    try:
        rid = jobs.create_run(spec)
        uploads.bind_to_run((model, data, labels), rid)
        jobs.launch_run(rid)
    except QuantLensError as exc:
        st.session_state[keys.SETUP_LAUNCH_ERROR] = str(exc)
        return
    st.session_state.pop(keys.SETUP_LAUNCH_ERROR, None)
    runs.select_run(rid)
    st.rerun()


@st.cache_resource(max_entries=4, show_spinner=False)
def _clean_uploads(home_dir: str) -> tuple[str, ...]:
    return tuple(str(p) for p in stale_uploads.clean_workspace_uploads(home=Path(home_dir)))


def clean_uploads_once() -> tuple[str, ...]:
    """At server start (once per workspace), remove uploads no stored run needs any more."""
    return _clean_uploads(str(workspace_home()))
