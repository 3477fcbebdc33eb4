"""QuantLens entry point: page config, navigation and the shared sidebar; nothing else."""

import streamlit as st

from ui.history import recover_once
from ui.runs import sidebar
from ui.setup_form import clean_uploads_once

st.set_page_config(page_title="QuantLens", page_icon=":material/compare:", layout="wide")

# Add a page by appending one st.Page to a section; History and Compare slot in under "Runs".
# The page scripts live in views/, not pages/: Streamlit lists a pages/ folder's files in the
# sidebar on a reload or a deep link, in place of these sections (tests/e2e/test_browser.py).
PAGES: dict[str, list[st.Page]] = {
    "Runs": [
        st.Page("views/setup.py", title="Setup", icon=":material/tune:", default=True),
        st.Page("views/history.py", title="History", icon=":material/history:"),
        st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    ],
    "Results": [
        st.Page("views/overview.py", title="Overview", icon=":material/dashboard:"),
        st.Page("views/size.py", title="Size", icon=":material/straighten:"),
        st.Page("views/agreement.py", title="Agreement", icon=":material/handshake:"),
        st.Page("views/disagreements.py", title="Disagreements", icon=":material/image_search:"),
        st.Page("views/deltas.py", title="Probability deltas", icon=":material/bar_chart:"),
        st.Page("views/latency.py", title="Latency", icon=":material/speed:"),
        st.Page("views/layers.py", title="Layers", icon=":material/layers:"),
        st.Page("views/targets.py", title="Targets", icon=":material/memory:"),
    ],
}

recover_once()  # runs killed with the last server become failed: interrupted
clean_uploads_once()  # uploads whose runs were deleted, or never run and idle for a day
navigation = st.navigation(PAGES)
sidebar()
navigation.run()
