"""knnguard app: is the CNN's prediction trustworthy? kNN scores of its hidden-layer features (Carrara et al. 2018).

    streamlit run app.py                                   # browses data/runs/*
    KNNGUARD_RUNS_DIR=/somewhere streamlit run app.py      # browses /somewhere/*

Only the page config, the navigation and the shared sidebar (run picker, detector settings) live here; each
page is a file in app_pages/ (not `pages/`: a folder of that name next to app.py switches Streamlit
to its legacy multipage mode for a first visit to a sub-page URL, which runs the page without app.py).
"""
from pathlib import Path

import streamlit as st

from app_pages import loaders, url_state
from app_pages.state import PAGES, PageEnd, current_run, sidebar

# A shipped icon: a ":material/...:" page icon makes the browser fetch the favicon from fonts.gstatic.com.
FAVICON = Path(__file__).resolve().parent / "assets" / "favicon.png"
st.set_page_config(page_title="knnguard", page_icon=str(FAVICON), layout="wide")
page = st.navigation([
    st.Page(PAGES["inspect"], title="Inspect", icon=":material/search:", url_path="home", default=True),
    st.Page(PAGES["attack"], title="Attack", icon=":material/bolt:", url_path="attack"),
    st.Page(PAGES["threshold"], title="Threshold", icon=":material/tune:", url_path="threshold"),
    st.Page(PAGES["layers"], title="Layers", icon=":material/stacked_bar_chart:", url_path="layers"),
    st.Page(PAGES["failures"], title="Failure cases", icon=":material/report:", url_path="failures"),
    st.Page(PAGES["compare"], title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page(PAGES["adaptive"], title="Adaptive attacks", icon=":material/gpp_maybe:", url_path="adaptive"),
    st.Page(PAGES["run"], title="Run", icon=":material/info:", url_path="run"),
] + url_state.alias_pages())  # /inspect opened directly, /Threshold...
sidebar()
loaders.warm(current_run())  # the detector loads in the background while the page draws
try:
    page.run()
except PageEnd:  # a page that ended early (state.end_page): the view is still written below
    pass
finally:
    url_state.write(page.url_path)  # the view in the URL, also when the page stopped early
    loaders.warm_imports()  # what the other pages import, while the browser draws this one
