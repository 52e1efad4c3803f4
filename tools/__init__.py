"""Helpers shared by tests, benchmarks and scripts: the app served on loopback (:mod:`tools.app_server`), a
Streamlit protocol client (:mod:`tools.st_client`) and Chromium driven by Playwright (:mod:`tools.browser`)."""
