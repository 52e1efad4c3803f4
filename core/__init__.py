"""knnguard core library: detect adversarial inputs to a CNN with kNN over its hidden-layer features.

The modules each have one job (see docs/design.md): ``zoo`` (models and datasets by name), ``data``
(dataset readers, uploads), ``features`` (activations), ``processing`` (none / L2 / PCA-whitening),
``index`` (faiss), ``scoring`` (kNN scores), ``attacks``, ``metrics``, ``artefacts`` (the run folder) and
``detector`` (the façade). Nothing here imports Streamlit.
"""
