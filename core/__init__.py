"""knnguard core library: detect adversarial inputs to a CNN with kNN over its hidden-layer features.

The modules each have one job (see docs/design.md): ``zoo`` (models by name), ``data`` (dataset readers),
``transforms`` (model-input geometry), ``uploads`` / ``upload_policy`` / ``upload_sandbox`` (user images),
``features`` (activations), ``processing`` (none / L2 / PCA), ``index`` (faiss), ``scoring`` (kNN scores),
``attacks`` (a package), ``metrics``, ``rundata`` and ``evaluation`` (a run's stored sets and their figures),
``splits`` / ``bootstrap`` / ``operating_point`` / ``findings`` / ``honest`` / ``live`` (held-out choices and
intervals), ``artefacts`` / ``runfiles`` / ``signing`` (the run folder), ``threads`` and ``detector`` (the
façade). Nothing here imports Streamlit.
"""
