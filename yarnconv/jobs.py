"""The requests each command takes, as data: the CLI builds its options from them, the library checks
them per route, and recipes fill them from TOML (see :mod:`yarnconv.options`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from yarnconv.errors import YarnconvError
from yarnconv.options import group, option
from yarnconv.plan import ExtendRequest

OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")
ROPE_ROUTES = ("auto", "keys", "freqs")
LINK_MODES = ("auto", "reflink", "hardlink", "copy")
GGUF_SETTINGS = ["outtype", "gguf_rope", "pre_tokenizer", "split_max_size", "imatrix"]


@dataclass(frozen=True)
class GGUFOptions:
    """How an HF checkpoint becomes GGUF (``export --gguf`` and ``extend --gguf``)."""

    outtype: str | None = option(
        help="GGUF type, or several comma-separated (one file each, -o DIR): auto (bf16 for bf16 weights, else f16), f32, f16, bf16, q8_0, "
        "or llama.cpp's quant ladder q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s/m/l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, iq3_s, iq3_m, iq4_nl, iq4_xs (needs llama-cpp-python).",
        shown="auto",
    )
    gguf_rope: str | None = option(
        help="keys: llama.cpp's YaRN keys; freqs: an exact rope_freqs.weight tensor (llama family); auto: keys unless they lose settings.",
        choices=ROPE_ROUTES,
        shown="auto",
    )
    pre_tokenizer: str | None = option(help="llama.cpp pre-tokenizer name, when tokenizer.json's is not recognised.")
    split_max_size: str | None = option(help="Split into shards of at most N bytes (e.g. 2G, 500M; decimal units).")
    imatrix: str | None = option(
        help="Importance matrix from llama-imatrix (GGUF or legacy .dat) for the quantized types; also allows the types llama.cpp makes only with one (iq1_s, iq1_m, iq2_*, iq3_xxs, iq3_xs, q2_k_s).",
        kind=os.PathLike,
    )

    def split_bytes(self) -> int:
        """``split_max_size`` in bytes (0: one file)."""
        return parse_size(self.split_max_size, "--split-max-size")


def parse_size(text: str | None, flag: str) -> int:
    """``2G``, ``2GB``, ``500M`` or a byte count (decimal units, as transformers and llama.cpp use); 0 when not given."""
    if not text:
        return 0
    units = {"K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
    t = text.strip().upper().removesuffix("B")
    try:
        value = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, IndexError):
        raise YarnconvError(f"{flag} {text!r} is not a size", "write it like 2GB, 500MB or 1000000") from None
    if value <= 0:
        raise YarnconvError(f"{flag} {text!r} is not a positive size", "write it like 2GB, 500MB or 1000000")
    return value


@dataclass(frozen=True)
class ExtendJob:
    """Everything ``yarnconv extend`` takes besides the model."""

    output: str | None = option(
        help="Output directory; with --gguf or a .gguf MODEL, a .gguf file or directory.", short="-o", kind=os.PathLike
    )
    in_place: bool = option(False, "GGUF MODEL: edit its header in place (only when the new keys fit).")
    gguf: bool = option(False, "Write a GGUF file instead of an HF checkpoint (extend and export in one go).")
    export: GGUFOptions = group(GGUFOptions)
    rope: ExtendRequest = group(ExtendRequest)
    force: bool = option(False, "Replace an existing output.")
    link: str | None = option(
        help="How weight files reach the output; auto tries reflink, hardlink, then copy.", choices=LINK_MODES, shown="auto"
    )
    precompute_inv_freq: bool = option(False, "Also write yarnconv_rope.safetensors with the final inverse frequencies.")
    revision: str | None = option(help="Hub revision, when MODEL is a Hub id.")
    base_model: str | None = option(help="The Hub id of the model being extended (ORG/NAME), for the card's base_model and yarnconv.json; default: detected from a Hub id input, a Hub cache path (models--ORG--NAME/snapshots/...) or SOURCE.json.")
    dry_run: bool = option(False, "Show the plan and the new rope config; write nothing.")
    verify: bool = option(False, "Run verify's checks on the output right after writing it (transformers for HF, llama.cpp for GGUF); a failure exits 3 and keeps the output.")


@dataclass(frozen=True)
class ExportJob:
    """Everything ``yarnconv export`` takes besides the model."""

    gguf: bool = option(False, "Write GGUF for llama.cpp.")
    hf: bool = option(False, "Write an HF checkpoint directory, cast with --dtype and resharded with --max-shard-size.")
    safetensors: bool = option(False, "Write one .safetensors file holding every tensor, config.json and yarnconv.json in its metadata.")
    output: str | None = option(
        help="Output .gguf file, or a directory for llama.cpp's naming.", short="-o", kind=os.PathLike, required=True
    )
    export: GGUFOptions = group(GGUFOptions)
    name: str | None = option(help="Model name for general.name and the file name (default: the directory or Hub name).")
    dtype: str | None = option(help="--hf / --safetensors: cast float tensors to this dtype (default: unchanged).", choices=("f32", "f16", "bf16"))
    max_shard_size: str | None = option(help="--hf: shards of at most this size, e.g. 2GB (default: one file).")
    force: bool = option(False, "Overwrite existing output files.")
    dry_run: bool = option(False, "Show what would be written; write nothing.")
    verify: bool = option(
        False,
        "Run verify's checks on each GGUF in llama.cpp right after writing it (MODEL as --base), and report each quantized type's KL against the float file; a failure exits 3 and keeps the output.",
    )


@dataclass(frozen=True)
class InspectJob:
    """What ``yarnconv inspect`` takes besides the model."""

    revision: str | None = option(help="Hub revision, when MODEL is a Hub id.")


@dataclass(frozen=True)
class DemoJob:
    """What ``yarnconv demo`` takes."""

    output: str = option("demo-out", "Output directory (the GGUF goes beside it as OUTPUT.gguf).", short="-o", kind=os.PathLike)
    scale: float = option(4.0, "YaRN factor for the demo.", kind=float)


@dataclass(frozen=True)
class VerifyJob:
    """What ``yarnconv verify`` takes besides the model."""

    base: str | None = option(
        help="The checkpoint MODEL came from: for a GGUF, the HF directory it was exported from (the reference runs its weights); for an HF output, the model it was extended from.",
        kind=os.PathLike,
    )
    tokens: int = option(256, "Probe length: half below the original context, half ending at the new context's last position.", kind=int)
    seed: int = option(0, "Seed of the probe's token ids and text choice.", kind=int)
    text: str | None = option(help="Probe text file, through the model's own tokenizer (default: Python's standard-library sources on this machine).", kind=os.PathLike)
    seeded: bool = option(False, "Probe with seeded random token ids instead of text.")
    passkey: bool = option(False, "Also run passkey retrieval (a 5-digit key hidden in filler text), beside --base for HF outputs.")
    lengths: str | None = option(help="Passkey prompt lengths, e.g. 8k,16k,32k (default: the original and the new context).")
    passkey_trials: int = option(2, "Passkey trials per length and depth (5 depths).", kind=int)
    passkey_min: float | None = option(help="Fail unless the extended model's passkey accuracy reaches this at every length (0-1).", kind=float)
    dtype: str | None = option(
        help="transformers' load dtype; auto: float32 when the model fits in 60% of free memory, else the checkpoint's half precision (looser bounds).",
        choices=("auto", "float32", "bfloat16", "float16"),
        shown="auto",
    )
    report: str | None = option(help="Also write the report to this JSON file.", kind=os.PathLike)
    engine: tuple[str, ...] = option(
        (),
        "Runtime to run MODEL in, repeatable: transformers or vllm for an HF checkpoint, llama.cpp for a GGUF.",
        choices=("transformers", "llama.cpp", "vllm"),
        shown="transformers for HF, llama.cpp for GGUF",
        multiple=True,
    )
    engine_python: str | None = option(help="The Python of a virtualenv with vLLM, for --engine vllm when this one lacks it (or set YARNCONV_VLLM_PYTHON).", kind=os.PathLike)


@dataclass(frozen=True)
class EvalJob:
    """What ``yarnconv eval`` takes besides the model."""

    base: str | None = option(
        help="The model MODEL was extended from (an HF directory; for a GGUF MODEL, a GGUF file); default: MODEL's own weights with the rope they had before extend.",
        kind=os.PathLike,
    )
    lengths: str | None = option(help="Context lengths, e.g. 2k,4k,8k,16k,32k (default: from a quarter of the original length, doubling, to the new context).")
    methods: str | None = option(
        help="Other scalings at the same factor, built from the base on the fly, comma-separated: yarn, linear (PI), dynamic (NTK); '' for none.", shown="linear,dynamic,yarn"
    )
    stride: int = option(256, "Sliding-window stride S: each window scores its last S tokens, which see at least L-S tokens of context.", kind=int)
    windows: int = option(1, "Windows per length and document, S apart (more scored tokens, proportionally more time).", kind=int)
    text: tuple[str, ...] = option((), "Text file to score, repeatable; each file is one document (default: Python's standard-library sources on this machine).", kind=os.PathLike, multiple=True)
    engine: str | None = option(
        help="Runtime: transformers (HF), llama.cpp (GGUF), or reference (yarnconv's streaming forward, for models transformers cannot hold).",
        choices=("transformers", "llama.cpp", "reference"),
        shown="transformers for HF (reference when it does not fit), llama.cpp for GGUF",
    )
    passkey: bool = option(False, "Also run passkey retrieval (verify's test) at every length for every row.")
    passkey_trials: int = option(2, "Passkey trials per length and depth (5 depths).", kind=int)
    seed: int = option(0, "Seed of the text choice and the passkeys.", kind=int)
    report: str | None = option(help="Also write the report to this JSON file.", kind=os.PathLike)


@dataclass(frozen=True)
class RunJob:
    """What ``yarnconv run RECIPE`` takes besides the recipe."""

    model: str | None = option(help="The model to extend: a local checkpoint or Hub id (default: the recipe's [source] model).")
    output: str | None = option(help="Output directory for the extended checkpoint; GGUF files go beside it in OUTPUT-GGUF/.", short="-o", kind=os.PathLike)
    force: bool = option(False, "Replace existing outputs.")
    dry_run: bool = option(False, "Validate the recipe, show the plan and the steps; write nothing.")
    push: bool = option(False, "Then push the checkpoint to the recipe's [push] repo and the GGUF folder to REPO-GGUF.")
    base_model: str | None = option(help="The Hub id of the model being extended (ORG/NAME), for the card's base_model and yarnconv.json; default: detected from a Hub id input, a Hub cache path (models--ORG--NAME/snapshots/...) or SOURCE.json.")


@dataclass(frozen=True)
class PushJob:
    """What ``yarnconv push FOLDER REPO_ID`` takes besides those two."""

    private: bool = option(False, "Create the repo private (an existing repo keeps its visibility).")
    revision: str | None = option(help="Branch to commit to (created if missing; default main).")
    create_pr: bool = option(False, "Open a pull request instead of committing to the branch.")
    commit_message: str | None = option(help="Commit message (default: Upload FOLDER (yarnconv)).")
    include: str | None = option(help="Only files matching these comma-separated patterns, e.g. '*.gguf,README.md'.")
    exclude: str | None = option(help="Leave out files matching these comma-separated patterns.")
    dry_run: bool = option(False, "List the files with their sizes and print the card; upload nothing.")
    base_model: str | None = option(help="The Hub id (ORG/NAME) the folder's model was extended from, written into its yarnconv.json and card before the upload (when extend could not tell).")
