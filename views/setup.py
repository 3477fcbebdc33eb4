"""Setup: pick a model, data, preset and quantization modes, then run; shows live progress."""

import streamlit as st

from core.errors import QuantLensError
from core.jobs import launch as jobs
from core.types import Preset, RunStatus
from ui import cache, fmt, history, keys, runs, setup_form

st.title("Set up a comparison")
st.caption(
    "Convert a TensorFlow image classifier to TFLite and see what each quantization "
    "mode gains and loses on your images."
)

setup_form.restore_form()  # a reload is a new session: reopen the form as the user left it
demo_ok = setup_form.demo_ready()

model = setup_form.model_section(demo_ok)
signature = None
if model.error:
    st.error(model.error)
elif model.path:
    try:
        with st.spinner("Reading the model signature…"):
            signature = cache.model_signature(model.path, trusted=setup_form.trusted_requested())
        setup_form.show_signature(signature)
    except QuantLensError as exc:
        st.error(str(exc))
        setup_form.forget_refused_upload("model")

data, labels = setup_form.data_section(demo_ok)
dataset = None
if data.error:
    st.error(data.error)
elif data.path:
    try:
        dataset = cache.dataset(data.path, labels_file=labels, extract_dir=data.extract_dir)
        setup_form.show_dataset(dataset, signature)
    except QuantLensError as exc:
        st.error(str(exc))
        setup_form.forget_refused_upload("data")

# The demo model is trained on mobilenet_v2 input ([-1, 1]), the common Keras default; once
# another model and data are chosen, the preset check pre-selects a clearly better preset.
checked = (
    setup_form.preset_trial(model, data, labels)
    if signature is not None
    and dataset is not None
    and dataset.samples
    and st.session_state.get(keys.SETUP_MODEL_SOURCE) != setup_form.MODEL_SOURCES[0]
    else None
)
preset = setup_form.preset_section(signature, dataset, Preset.MOBILENET_V2, checked)
variants = setup_form.variants_section()
options = setup_form.options_section(None if dataset is None else len(dataset.samples))
setup_form.remember_form()

st.divider()
active = runs.active_runs()
problems = []
if signature is None:
    problems.append("a readable model")
if dataset is None or not dataset.samples:
    problems.append("a data set with at least one image")
if not variants:
    problems.append("at least one quantization mode")
if setup_form.tracking_uri_refusal():
    problems.append("an allowed MLflow tracking server, or a blank one")
if setup_form.calibration_path_refused():
    problems.append("an existing separate calibration set, or a blank one")
if setup_form.sweep_refused():
    problems.append("sweep sizes such as 10,50,100, or none")
refused = setup_form.option_refusal()
if refused:
    problems.append(f"an accepted value for {refused}")
left, right = st.columns([1, 3])
clicked = left.button(
    "Run",
    key=keys.SETUP_RUN,
    type="primary",
    icon=":material/play_arrow:",
    disabled=bool(problems),
    width="stretch",
)
if problems:
    right.caption("Needs " + ", ".join(problems) + ".")
elif active:
    # Runs take turns so their latencies never share the cores; a new one waits in line.
    right.caption(
        f"{len(variants)} variant(s): {', '.join(variants)}. "
        f"{len(active)} run(s) in progress or queued: Run queues this one after them."
    )
else:
    right.caption(f"{len(variants)} variant(s): {', '.join(variants)}")

if clicked and model.path and data.path:
    setup_form.launch(model.path, data.path, labels, variants, preset, options)
if st.session_state.get(keys.SETUP_LAUNCH_ERROR):
    st.error(st.session_state[keys.SETUP_LAUNCH_ERROR])

shown = runs.selected_run_id()
if shown and shown in {r.id for r in active}:
    runs.live_progress(shown)
elif shown:
    runs.draw_progress(shown)
    st.page_link("views/overview.py", label="Open the overview", icon=":material/dashboard:")

# Below the progress box, so the box keeps its place on the page when its run ends.
if active:
    st.markdown("**Running and queued**")
    for place, row in enumerate(active):
        line, button = st.columns([5, 1])
        if row.status is RunStatus.RUNNING:
            state = "running"
        else:
            state = f"queued, {place} run(s) ahead" if place else "queued, starting next"
        line.markdown(f"{fmt.text(row.name or row.id)} · {row.id[-6:]} — {state}")
        if button.button("Cancel", key=f"{keys.SETUP_CANCEL}.{row.id}", icon=":material/stop:"):
            try:
                jobs.cancel_run(row.id, home=history.home())
            except QuantLensError as exc:
                st.error(str(exc))
            else:
                history.invalidate()
