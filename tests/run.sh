#!/usr/bin/env bash
# Run every test, the browser tests included: installs what they need first (Python packages, and Debian's
# chromium with a CJK font when they are missing), then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
# The Ray Serve backend's tests (tests/test_ray_*.py) run a local Ray and a token-authenticated cluster.
python -m pip install -q -r requirements-ray.txt
# torchao is optional for the app (--quantize int8 only); the tests exercise that path for real.
python -m pip install -q torchao==0.18.0
if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi "wenquanyi"; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium fonts-wqy-microhei
fi
# Style first: the tree stays ruff-clean and formatted (pyproject.toml holds the rules).
ruff check .
ruff format --check .
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
python -m pytest "$@"
