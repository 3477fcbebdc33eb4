"""Session-state key names, one constant each, namespaced by page ("setup.modes")."""

from core.options import widget_key  # a run option's key is declared with its widget

# app-wide
SELECTED_RUN = "app.selected_run"
SIDEBAR_RUN = "app.sidebar_run"

# setup
SETUP_MODEL_SOURCE = "setup.model_source"
SETUP_MODEL_PATH = "setup.model_path"
SETUP_MODEL_UPLOAD = "setup.model_upload"
SETUP_DATA_SOURCE = "setup.data_source"
SETUP_DATA_PATH = "setup.data_path"
SETUP_DATA_UPLOAD = "setup.data_upload"
SETUP_MODEL_UPLOADED = "setup.model_uploaded"  # the stored upload, kept across reloads
SETUP_DATA_UPLOADED = "setup.data_uploaded"
SETUP_LABELS_PATH = "setup.labels_path"
SETUP_PRESET = widget_key("preprocess")
SETUP_PRESET_CHECKED = "setup.preset_checked"  # the model and data the preset was checked for
SETUP_MODES = widget_key("modes")
SETUP_INT8_IO = "setup.int8_io"
SETUP_BACKEND = widget_key("backend")
SETUP_SELECT_TF_OPS = widget_key("select_tf_ops")
SETUP_CALIBRATION = widget_key("calibration_samples")
SETUP_CALIBRATION_OVERLAP = widget_key("calibration_overlap")
SETUP_CALIBRATION_DATA = widget_key("calibration_data")
SETUP_SWEEP = widget_key("calibration_sweep")
SETUP_RUNTIMES = widget_key("runtimes")
SETUP_SWEEP_SEEDS = widget_key("sweep_seeds")
SETUP_MAX_SAMPLES = widget_key("samples")
SETUP_THREADS = widget_key("threads")
SETUP_THRESHOLD = widget_key("min_agreement")
SETUP_VERDICT = widget_key("verdict")
SETUP_TARGET = widget_key("target")  # where the model will run (core.reporting.targets.Target)
SETUP_ARENA_KB = widget_key("arena_kb")  # the mcu target's arena limit in KiB; 0 = none
SETUP_PERTURB = widget_key("perturb")  # the flip hunt under small perturbations
SETUP_RUN_NAME = widget_key("name")
SETUP_TRUSTED = widget_key("trusted")
SETUP_TRUSTED_CONFIRM = "setup.trusted_confirm"
SETUP_MLFLOW = widget_key("mlflow")
SETUP_MLFLOW_URI = "setup.mlflow_uri"
SETUP_ENGINE = widget_key("engine")
SETUP_RUN = "setup.run"
SETUP_CANCEL = "setup.cancel"
SETUP_LAUNCH_ERROR = "setup.launch_error"
SETUP_SKIP_DEMO = "setup.skip_demo"
SETUP_SKIP_DEMO_BUTTON = "setup.skip_demo_button"
SETUP_DEMO_MODEL = "setup.demo_model"
# The form as the user left it: its values at this session's last Setup render, and every
# choice made since (ui.option_widgets.note_choice).
SETUP_FORM_SHOWN = "setup.form_shown"
SETUP_BUILD_MOBILENET = "setup.build_mobilenet"

# overview
OVERVIEW_TABLE = "overview.table"

# agreement
AGREEMENT_VARIANT = "agreement.variant"
AGREEMENT_FLIP_CHART = "agreement.flip_chart"
AGREEMENT_CLASS = "agreement.class"  # the class picked to open in the gallery
AGREEMENT_OPEN_CLASS = "agreement.open_class"

# disagreements
DISAGREE_VARIANT = "disagreements.variant"
DISAGREE_SORT = "disagreements.sort"
DISAGREE_CLASS = "disagreements.class"
DISAGREE_AT_RISK = "disagreements.at_risk"
DISAGREE_MARGIN = "disagreements.margin"
DISAGREE_PAGE = "disagreements.page"
DISAGREE_FLIP = "disagreements.flip"  # (variant, ref_class, tfl_class) set by the agreement page
DISAGREE_CLEAR_FLIP = "disagreements.clear_flip"
DISAGREE_PERTURBATION = "disagreements.perturbation"  # a perturbation whose new flips it shows
DISAGREE_RUNTIME = "disagreements.runtime"  # a runtime whose flips (vs XNNPACK) the gallery shows
OVERVIEW_RUNTIMES = "overview.runtimes"

# probability deltas
DELTAS_METRIC = "deltas.metric"
DELTAS_VARIANTS = "deltas.variants"
DELTAS_CHART = "deltas.chart"

# latency
LATENCY_LOG = "latency.log_scale"

# history
HISTORY_SEARCH = "history.search"
HISTORY_TABLE = "history.table"  # + "." + digest of the listed ids (see ui.history.table_key)
HISTORY_OPEN = "history.open"
HISTORY_RENAME = "history.rename"
HISTORY_RENAME_SAVE = "history.rename_save"
HISTORY_DELETE = "history.delete"
HISTORY_CONFIRM_DELETE = "history.confirm_delete"  # run ids waiting for "Yes, delete"
HISTORY_DELETE_YES = "history.delete_yes"
HISTORY_DELETE_NO = "history.delete_no"
HISTORY_CANCEL = "history.cancel"
HISTORY_COMPARE = "history.compare"
HISTORY_FLASH = "history.flash"  # one message shown after an action's rerun

# compare
COMPARE_ITEMS = "compare.items"  # list of "<run_id>/<variant>" option ids
COMPARE_PICKS = "compare.picks"  # the same, kept when the widget is not drawn
COMPARE_ONLY_CHANGED = "compare.only_changed"
COMPARE_LOG = "compare.log_scale"

# downloads (buttons are keyed "<prefix>.<run folder>.<file>")
DOWNLOADS = "downloads"

# layers
LAYERS_VARIANT = "layers.variant"
LAYERS_KEEP_FLOAT = "layers.keep_float"  # + ".<variant>": the layers chosen on its page
LAYERS_RESCORE_ERROR = "layers.rescore_error"  # why the last re-score could not start
LAYERS_DETAIL = "layers.detail"  # + ".<variant>": the layer whose details are shown

AGREEMENT_FLIP_HUNT = "agreement.flip_hunt"

# targets
TARGETS_TARGET = "targets.target"
TARGETS_ARENA = "targets.arena_kb"
TARGETS_TABLE = "targets.deployability"
