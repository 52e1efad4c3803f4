#!/usr/bin/env bash
# Install everything knnguard needs on a fresh Debian machine (idempotent): system packages when root,
# a virtualenv in .venv with the exact pins of requirements*.txt.
#   scripts/setup.sh          # runtime
#   scripts/setup.sh --dev    # + test tools (pytest, playwright) and Debian's chromium
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0; [ "${1:-}" = "--dev" ] && dev=1
pkgs=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || pkgs+=(dataset-fashion-mnist)
[ $dev = 1 ] && ! command -v chromium >/dev/null && pkgs+=(chromium)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${pkgs[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  else
    echo "warning: missing ${pkgs[*]}; install them (sudo apt-get install -y ${pkgs[*]}) or the dataset is downloaded by torchvision" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
req=requirements.txt; [ $dev = 1 ] && req=requirements-dev.txt
.venv/bin/pip install -q --disable-pip-version-check -r "$req"
