"""Example user code for knnguard (see precompute/configs/custom-example.toml)."""
