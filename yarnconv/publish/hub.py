"""``push``: publish an output folder to the Hugging Face Hub with huggingface_hub's commit API.

Only what yarnconv wrote or copied goes up: the files the extend record lists, yarnconv's own files
(config, record, card, verify report, recipe, sidecar) and, in a GGUF folder, the GGUF files and
their verify reports. Anything else in the folder (a ``.env``, caches, scratch) is left out and
listed. The card is refreshed first. Large files go through the client's own transfer (Xet, or
git-LFS); objects the Hub already holds are not sent again, so re-running a failed push resumes.
The token comes from where huggingface_hub looks (``HF_TOKEN``, the login cache) and is never
printed or written.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from yarnconv.errors import YarnconvError
from yarnconv.publish.card import CARD, RECIPE, REPORT, build_card, write_card
from yarnconv.publish.plot import PNG
from yarnconv.storage.files import CONFIG, RECORD, read_json

OWN = {CONFIG, RECORD, CARD, REPORT, RECIPE, PNG, "yarnconv-eval.json", "yarnconv-eval.png", "yarnconv_rope.safetensors", "model.safetensors.index.json"}


def publishable(folder: Path) -> tuple[list[str], list[str], Path | None]:
    """(files to push, files left out, the checkpoint whose record describes them). A GGUF folder
    (``OUT-GGUF``) is described by the checkpoint beside it (``OUT``)."""
    every = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    if (folder / RECORD).is_file():
        record = read_json(folder / RECORD, RECORD)
        listed = {f["path"] for f in record.get("files", []) if isinstance(f, dict) and "path" in f}
        keep = [f for f in every if f in listed or f in OWN or fnmatch.fnmatch(f, "model*.safetensors")]
        home: Path | None = folder
    elif any(f.endswith(".gguf") for f in every):
        keep = [f for f in every if "/" not in f and (f.endswith((".gguf", ".gguf.verify.json", ".gguf.eval.json", ".gguf.eval.png")) or f in (CARD, PNG))]
        beside = folder.parent / folder.name.removesuffix("-GGUF")
        home = beside if (beside / RECORD).is_file() else None
    else:
        raise YarnconvError(f"{folder} is not a yarnconv output (no {RECORD}, no .gguf files)", "push what yarnconv extend, export or run wrote")
    keep = [f for f in keep if not any(part.startswith(".") for part in f.split("/"))]
    return keep, [f for f in every if f not in keep], home


def _set_base_model(home: Path | None, base_model: str, dry_run: bool) -> None:
    """--base-model: checked as a Hub id, then recorded in the checkpoint's yarnconv.json (the card reads it)."""
    from yarnconv.storage.files import write_json
    from yarnconv.storage.sources import REPO_ID

    if not REPO_ID.match(base_model) or base_model.startswith((".", "/")):
        raise YarnconvError(f"--base-model {base_model!r} is not a Hub id", "write it as ORG/NAME, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    if home is None:
        raise YarnconvError("--base-model needs the checkpoint's yarnconv.json, and this folder has none beside it", "push the folder extend or run wrote")
    if not dry_run:
        write_json(home / RECORD, {**read_json(home / RECORD, RECORD), "base_model": base_model})


def full_repo_id(repo: str, token: str | None = None) -> str:
    """``name`` in the token owner's namespace, or ``org/name`` as given."""
    if "/" in repo:
        return repo
    from huggingface_hub import HfApi

    try:
        user = HfApi(token=token).whoami()["name"]
    except Exception as exc:  # noqa: BLE001 - no token, a refused token or no network all mean the same here
        raise YarnconvError(f"cannot tell your Hub namespace for {repo!r} ({type(exc).__name__})", "log in (hf auth login or HF_TOKEN), or write the repo as org/name") from None
    return f"{user}/{repo}"


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    dry_run: bool = False,
    token: str | None = None,
    progress: bool = True,
    base_model: str | None = None,
) -> dict[str, Any]:
    """Upload ``folder`` to ``repo_id`` (created if needed) in one commit; returns what was sent.
    ``base_model`` (ORG/NAME) is written into the record and the card first (not on a dry run)."""
    root = Path(folder)
    if not root.is_dir():
        raise YarnconvError(f"{folder} is not a directory", "push an output folder of extend, export --hf or run")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise YarnconvError(f"{repo_id!r} is not a Hub repo id", "write it as user/name, e.g. me/Qwen2.5-7B-Instruct-YaRN-128k")
    files, left_out, home = publishable(root)
    if base_model is not None:
        _set_base_model(home, base_model, dry_run)
    files, card_text = _selected(root, files, home, include, exclude, base_model)
    gguf = not (root / RECORD).is_file()
    if not files:
        raise YarnconvError(f"nothing to push from {folder} with these --include/--exclude patterns", "loosen the patterns")
    record: dict[str, Any] = {
        "repo_id": repo_id,
        "folder": str(root),
        "files": [{"path": f, "bytes": len(card_text.encode()) if f == CARD and card_text else (root / f).stat().st_size} for f in sorted(files)],
        "left_out": left_out,
        "private": private,
        "revision": revision,
        "create_pr": create_pr,
        "dry_run": dry_run,
        "card": card_text,
    }
    record["bytes"] = sum(f["bytes"] for f in record["files"])
    if dry_run:
        return record
    if card_text is not None:
        write_card(root, gguf=gguf, record_dir=home)
        record["files"] = [{"path": f, "bytes": (root / f).stat().st_size} for f in sorted(files)]
    record["bytes"] = sum(f["bytes"] for f in record["files"])
    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    record.update(_upload(root, repo_id, sorted(files), private, revision, create_pr, commit_message or f"Upload {root.name} (yarnconv)", token))
    return record


def _selected(root: Path, files: list[str], home: Path | None, include: list[str] | None, exclude: list[str] | None, base_model: str | None) -> tuple[list[str], str | None]:
    """The files the patterns keep, and the refreshed card's text when the card goes up (it is written only when pushing)."""
    if include:
        files = [f for f in files if any(fnmatch.fnmatch(f, p) for p in include)]
    if exclude:
        files = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in exclude)]
    card_text = None
    if home is not None and (CARD in files or not (root / CARD).exists()) and not (exclude and any(fnmatch.fnmatch(CARD, p) for p in exclude)):
        card_text = build_card(root, gguf=not (root / RECORD).is_file(), record_dir=home, hub_id=base_model)
        if CARD not in files and (include is None or any(fnmatch.fnmatch(CARD, p) for p in include)):
            files.append(CARD)
    return files, card_text


def _upload(root: Path, repo_id: str, files: list[str], private: bool, revision: str | None, create_pr: bool, message: str, token: str | None) -> dict[str, Any]:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(root / f)) for f in files]
        info = api.create_commit(repo_id, ops, commit_message=message, revision=revision, create_pr=create_pr)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        server = (getattr(exc, "server_message", None) or str(exc).splitlines()[0])[:200]
        raise YarnconvError(f"the Hub refused the push ({status}: {server}); nothing after the last commit was published", "check the repo id and your token (hf auth login, or HF_TOKEN); re-running resumes") from None
    except Exception as exc:  # connection refused, DNS, TLS: the HTTP client's transport errors
        if not isinstance(exc, OSError) and not any(c.__name__ in ("TransportError", "ConnectionError") for c in type(exc).__mro__):
            raise
        raise YarnconvError(f"cannot reach the Hub at {api.endpoint} ({type(exc).__name__})", "check the network or HF_ENDPOINT; re-running resumes") from None
    return {"repo_url": str(url), "commit_url": info.commit_url, "commit_oid": info.oid, "pr_url": info.pr_url}
