#!/usr/bin/env bash
# Run the TFLite tests on tflite-runtime 2.14 (its last release: CPython <= 3.11, numpy < 2),
# in a venv of its own (default .venv-legacy in the checkout; override with LEGACY_VENV).
#   bash scripts/test-tflite-legacy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LEGACY_VENV:-$(pwd)/.venv-legacy}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[tflite-legacy]" \
    "scikit-learn>=1.2" "pytest>=7.4" "pytest-timeout>=2.2" "hypothesis>=6.80"
"$venv/bin/python" -c "import numpy, tflite_runtime; print('numpy', numpy.__version__, 'tflite-runtime', tflite_runtime.__version__)"
FEDGE_TFLITE_RUNTIME=tflite-runtime "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_tflite.py tests/test_models.py "$@"
