"""The model card (README.md) of an extended checkpoint or its GGUF folder: YAML front matter the Hub
parses (the fields of huggingface_hub's ``ModelCardData``), then markdown. Written from a template:
extend and export must not import the Hub client (about a second), only push does.

Metadata: ``base_model`` (the Hub id the source came from, when known), ``base_model_relation``
``quantized`` for a GGUF folder and none otherwise (only the config changed: no finetune, adapter or
merge claim), tags, ``library_name``, and the license the source's own card declares. The text: the
YaRN table, what static YaRN costs and recovers (the paper), the verify results when a report is
there, the recipe when one was used, and the launch commands from :mod:`yarnconv.publish.hints`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from yarnconv import rope
from yarnconv.errors import YarnconvError
from yarnconv.gguf.file import shard_paths
from yarnconv.publish.hints import hints
from yarnconv.storage.files import RECORD, read_json

CARD = "README.md"
REPORT = "yarnconv-verify.json"
EVAL = "yarnconv-eval.json"
RECIPE = "yarnconv-recipe.toml"
TAGS = ["yarn", "long-context", "rope-scaling", "yarnconv"]
STATIC_NOTE = (
    "This is static YaRN without fine-tuning: every position uses the scaled frequencies, so prompts far shorter "
    "than the original context may lose a little quality, and the base model stays better below its original "
    "length. The YaRN paper (Peng et al. 2023, arXiv:2309.00071) recovers most of the gap with a short fine-tune "
    "on long documents (about 400 steps for Llama 2)."
)


def base_model(record: dict[str, Any], root: Path) -> str | None:
    """The Hub id the extended model came from, when yarnconv can tell: what extend recorded (given with
    --base-model or detected), else the source it names (records written before base_model existed)."""
    if isinstance(record.get("base_model"), str):
        return str(record["base_model"])
    src = record.get("source") or {}
    if src.get("kind") == "hub":
        return src.get("ref")
    for where in (root / "SOURCE.json", Path(src.get("path") or "") / "SOURCE.json"):
        if where.is_file():
            return json.loads(where.read_text()).get("hub_id")
    return None


LICENSE_KEYS = ("license", "license_name", "license_link")
_SCALAR = re.compile(r"^(license|license_name|license_link):[ \t]*(.+?)[ \t]*$")


def front_matter_scalars(text: str, keys: tuple[str, ...] = LICENSE_KEYS) -> dict[str, str]:
    """Top-level scalar ``key: value`` pairs of a card's YAML front matter (the license fields are
    plain or quoted scalars on the Hub); anything else in the YAML is left alone."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    found: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        m = _SCALAR.match(line)
        if m and m[1] in keys:
            value = m[2].split(" #", 1)[0].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            if value:
                found[m[1]] = value
    return found


def _source_license(root: Path, record: dict[str, Any]) -> dict[str, Any]:
    """license, license_name and license_link from the source's own card (copied beside the weights)."""
    for card in (Path((record.get("source") or {}).get("path") or "") / CARD, root / CARD):
        if card.is_file():
            try:
                found = front_matter_scalars(card.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):  # an unreadable source card only loses the license
                continue
            if found:  # the source's card, else our own earlier card (which carried the source's license)
                return found
    return {}


def _yaml_scalar(value: str) -> str:
    """A plain YAML scalar when that reads back as the same string, else a double-quoted one (JSON's
    escapes are YAML's)."""
    plain = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/+-]*", value) and value.lower() not in ("true", "false", "null", "yes", "no", "on", "off", "~")
    return value if plain and not re.fullmatch(r"[0-9.eE+-]+", value) else json.dumps(value, ensure_ascii=False)


def front_matter(meta: dict[str, Any]) -> str:
    """The card's YAML metadata block (strings and lists of strings)."""
    out = ["---"]
    for k, v in meta.items():
        if isinstance(v, list):
            out += [f"{k}:", *(f"- {_yaml_scalar(str(x))}" for x in v)]
        else:
            out.append(f"{k}: {_yaml_scalar(str(v))}")
    return "\n".join([*out, "---"])


def build_card(
    root: Path, *, gguf: bool = False, record_dir: Path | None = None, figure: bool = True, hub_id: str | None = None, name: str | None = None, record: dict[str, Any] | None = None
) -> str:
    """The card text for the checkpoint directory ``root`` (or, with ``gguf``, the folder of GGUF
    files made from the checkpoint at ``record_dir``); ``hub_id`` replaces the base_model the record
    names (``push --base-model --dry-run`` shows the card it would write); ``name`` is the folder's final
    name when ``root`` is still the scratch directory of an output being written."""
    home = record_dir or root
    if record is None:  # a refresh: the record on disk (a step that just wrote one passes it in)
        if not (home / RECORD).is_file():
            raise YarnconvError(f"{home} has no {RECORD}: not a yarnconv output", "write the card for what yarnconv extend or run wrote")
        record = read_json(home / RECORD, RECORD)
    base = hub_id or base_model(record, home)
    meta: dict[str, Any] = {"tags": TAGS + (["gguf"] if gguf else []), "pipeline_tag": "text-generation", **_source_license(home, record)}
    if base:
        meta["base_model"] = base
        if gguf:
            meta["base_model_relation"] = "quantized"
    if not gguf:
        meta["library_name"] = "transformers"
    return f"{front_matter(meta)}\n\n{_body(root, home, record, base, gguf, figure, name or root.name)}"


def _body(root: Path, home: Path, record: dict[str, Any], base: str | None, gguf: bool, figure: bool, name: str) -> str:
    after = record.get("rope_after") or {}
    ctx = record.get("max_position_embeddings") or {}
    factor, original = after.get("factor"), after.get("original_context")
    attention = after.get("attention_factor") or (rope.mscale(factor) if factor else None)
    lines = [f"# {name}", ""]
    what = f"[{base}](https://huggingface.co/{base})" if base else "its source model"
    variant = record.get("variant") or {}
    if gguf:
        weights = "These are GGUF files for llama.cpp; the YaRN keys are in each file."
    elif variant.get("dtype", "unchanged") != "unchanged":
        weights = f"The weights are the base model's cast to {variant['dtype']} (as torch's tensor.to casts them) in {variant.get('shards')} shard(s); nothing else about them changed."
    else:
        weights = "Only the configuration changed (config.json, and the tokenizer's maximum length): the weights are the base model's, byte for byte."
    lines.append(f"{what} with its context extended from {ctx.get('before')} to {ctx.get('after')} tokens by YaRN RoPE scaling, written by yarnconv {record.get('yarnconv_version')}. {weights}")
    lines += ["", "## YaRN", "", "| setting | value |", "|---|---|"]
    rows = [("method", after.get("rope_type")), ("factor s", factor), ("original context L", original), ("new context", ctx.get("after")), ("rope theta", after.get("theta")), ("beta_fast / beta_slow", f"{after.get('beta_fast')} / {after.get('beta_slow')}"), ("attention factor", f"{attention:.6g}" if attention else None)]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    lines += ["", STATIC_NOTE, ""]
    if record.get("overrides"):
        lines += ["## Refusals overridden", "", "yarnconv refused this conversion and was told to write it anyway:", ""]
        lines += [f"- {o}" for o in record["overrides"]] + [""]
    from yarnconv.publish import plot

    if (figure and plot.available()) or (root / plot.PNG).is_file():
        lines += [f"![Which RoPE dimensions YaRN keeps, blends or interpolates; verify's KL and NLL by position]({plot.PNG})", ""]
    lines += _verify_section(root, gguf)
    lines += _eval_section(root, gguf)
    if (home / RECIPE).is_file():
        lines += ["## Recipe", "", "```toml", (home / RECIPE).read_text().rstrip(), "```", ""]
    lines += _launch_section(root, gguf, name)
    return "\n".join(lines) + "\n"


def _verify_section(root: Path, gguf: bool) -> list[str]:
    reports = sorted(root.glob("*.gguf.verify.json")) if gguf else [root / REPORT] if (root / REPORT).is_file() else []
    if not reports:
        return ["## Verification", "", "Not run for this output: `yarnconv verify` writes the report the card shows.", ""]
    out = ["## Verification", "", "`yarnconv verify` ran the model in its runtime against yarnconv's reference forward with the planned rope:", ""]
    out += _quant_table(reports)
    for path in reports:
        report = json.loads(path.read_text())
        head = f"**{path.name.removesuffix('.verify.json')}**: " if gguf else ""
        passed = sum(c["status"] == "passed" for c in report["checks"])
        out.append(f"{head}{report.get('engine')}, {passed} of {len(report['checks'])} checks passed ({'ok' if report.get('ok') else 'FAILED'}).")
        out += ["", "| check | status | KL mean |", "|---|---|---|"]
        for c in report["checks"]:
            kl = (c.get("measured") or {}).get("kl_mean")
            out.append(f"| {c['name']} | {c['status']} | {'' if kl is None else f'{kl:.3g}'} |")
        out.append("")
    return out


def _eval_section(root: Path, gguf: bool) -> list[str]:
    """``yarnconv eval``'s table (perplexity per row and length) and figure, when it ran on this output."""
    reports = sorted(root.glob("*.gguf.eval.json")) if gguf else [root / EVAL] if (root / EVAL).is_file() else []
    if not reports:
        return []
    out = ["## Long-context evaluation", ""]
    for path in reports:
        r = json.loads(path.read_text())
        lengths = [f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in r["lengths"]]
        head = f"**{path.name.removesuffix('.eval.json')}**: " if gguf else ""
        out += [f"{head}`yarnconv eval`, perplexity in {r['engine']} on {r['text']['source']} ({r['text']['scored_tokens_per_length']} tokens scored per length; {r['protocol']['definition']}). Lower is better; the original context is {r['original_context']}, the new one {r['context']}.", ""]
        out += ["| | " + " | ".join(lengths) + " |", "|---|" + "---|" * len(lengths)]
        for row in r["rows"]:
            label = row["label"] + (f" (= {row['same_as']})" if row.get("same_as") else "")
            out.append(f"| {label}: {row['describe']} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in row["ppl"]) + " |")
        out.append("")
        if r.get("passkey"):
            pk = r["passkey"]["per_length"]
            out += ["Passkey retrieval (accuracy over 5 depths):", "", "| | " + " | ".join(lengths) + " |", "|---|" + "---|" * len(lengths)]
            for label in dict.fromkeys(p["model"] for p in pk):
                out.append(f"| {label} | " + " | ".join(f"{p['accuracy']:.0%}" for p in pk if p["model"] == label) + " |")
            out.append("")
        figure = Path(r.get("figure") or "")
        if figure.is_file() and figure.parent == path.parent:
            out += [f"![Perplexity against context length for each row]({figure.name})", ""]
    return out


def _quant_table(reports: list[Path]) -> list[str]:
    """What each quantized type cost against the float file it was made from (export --verify)."""
    rows, q = [], {}
    for path in reports:
        gguf = path.with_name(path.name.removesuffix(".verify.json"))
        if (found := json.loads(path.read_text()).get("vs_float")) and gguf.is_file():
            q = found
            files = shard_paths(gguf)  # a split set: its first file, and the size of them all
            name = gguf.name + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")
            rows.append(f"| {name} | {sum(f.stat().st_size for f in files) / 1e6:,.1f} MB | {q['kl_mean']:.4f} | {q['kl_p99']:.3f} | {q['same_top1']:.1%} |")
    if not rows:
        return []
    head = f"Each quantized file against the {str(q.get('against', 'float')).upper()} file it was quantized from, in llama.cpp, over {q.get('tokens')} tokens ({q.get('source')}); KL as `llama-perplexity --kl-divergence` reports it:"
    return [head, "", "| file | size | KL mean | KL 99% | same top-1 |", "|---|---|---|---|---|", *rows, ""]


def _launch_section(root: Path, gguf: bool, name: str) -> list[str]:
    targets = sorted(root.glob("*.gguf")) if gguf else [root]
    if not targets:
        return []
    h = hints(targets[0])
    out = ["## Run it", ""]
    for row in h["runtimes"]:
        if row.get("command"):
            command = row["command"].replace(str(targets[0]), targets[0].name if gguf else name)  # as after downloading the repo
            command = command if gguf else command.replace(targets[0].name, name)  # a scratch directory's name, too
            out += [f"**{row['runtime']}**", "", "```bash", command, "```", ""]
    kv = h.get("kv_cache_bytes") or {}
    if kv:
        out.append(f"KV cache at {h['context']} tokens, one sequence: " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in kv.items()) + ".")
        out.append("")
    return out


def write_card(root: Path, *, gguf: bool = False, record_dir: Path | None = None, figure: bool = True, name: str | None = None, record: dict[str, Any] | None = None) -> Path:
    """Write (or refresh) ``root/README.md`` whole (a temporary file renamed over it), and with
    ``figure`` its PNG when matplotlib is installed (extend writes both inside its atomic commit;
    refreshing after verify or eval redraws them)."""
    text = build_card(root, gguf=gguf, record_dir=record_dir, figure=figure, name=name, record=record)  # refuses a folder that is not yarnconv's
    from yarnconv.publish import plot

    if figure and plot.available():
        home = record_dir or root
        record = record if record is not None else read_json(home / RECORD, RECORD)
        from yarnconv.config import read_config
        from yarnconv.storage.files import CONFIG

        view = read_config(read_json(home / CONFIG, CONFIG))
        reports = sorted(root.glob("*.gguf.verify.json")) if gguf else [root / REPORT]
        report = next((json.loads(p.read_text()) for p in reports if p.is_file()), None)
        plot.rope_figure(record.get("rope_after") or {}, view.rope_head_dim or view.head_dim or 0, root / plot.PNG, (report or {}).get("by_position"))

    tmp = root / f".{CARD}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(root / CARD)
    return root / CARD
