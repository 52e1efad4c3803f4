#!/usr/bin/env bash
# Install everything the tests need (dataset, chromium, dev pins), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
exec .venv/bin/python -m pytest -q "$@"
