"""knnguard app: is the CNN's prediction trustworthy? kNN scores of its hidden-layer features (Carrara et al. 2018).

    streamlit run app.py                                   # browses data/runs/*
    KNNGUARD_RUNS_DIR=/somewhere streamlit run app.py      # browses /somewhere/*

Only the page config, the navigation and the shared sidebar (run picker, detector settings) live here; each
page is a file in app_pages/ (not `pages/`: a folder of that name next to app.py switches Streamlit
to its legacy multipage mode for a first visit to a sub-page URL, which runs the page without app.py).
"""
from pathlib import Path

import streamlit as st

from app_ui import cache, navigation, url_state
from app_ui.navigation import PageEnd
from app_ui.selection import current_run
from app_ui.sidebar import sidebar

# A shipped icon: a ":material/...:" page icon makes the browser fetch the favicon from fonts.gstatic.com.
FAVICON = Path(__file__).resolve().parent / "assets" / "favicon.png"
st.set_page_config(page_title="knnguard", page_icon=str(FAVICON), layout="wide")
page = st.navigation(navigation.pages(url_state.alias_pages()))  # sections; /inspect, /Threshold... as aliases
sidebar()
cache.warm(current_run())  # the detector loads in the background while the page draws
try:
    page.run()
except PageEnd:  # a page that ended early (navigation.end_page): the view is still written below
    pass
finally:
    url_state.write(page.url_path)  # the view in the URL, also when the page stopped early
    cache.warm_imports()  # what the other pages import, while the browser draws this one
