"""``yarnconv push`` and Hub-id input, against a real HTTP server on 127.0.0.1 that implements the Hub
endpoints the real huggingface_hub client calls (tests/hub_server.py). The client runs unmodified in
a subprocess with ``HF_ENDPOINT`` pointed at the server. Only the large-file transport is chosen:
Xet needs a CAS service that cannot be served locally, so ``HF_HUB_DISABLE_XET=1`` (the client's own
switch) makes it use git-LFS basic transfer, which the server implements."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_config, write_checkpoint
from hub_server import serve
from huggingface_hub import ModelCard

TOKEN = "hf_yarnconvTestToken0123456789abcdef"


@pytest.fixture
def hub(tmp_path: Path):  # type: ignore[no-untyped-def]
    state, url, server = serve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    yield state, env
    server.shutdown()


def yarnconv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "yarnconv", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def extended(tmp_path: Path, hub) -> Path:  # type: ignore[no-untyped-def]
    _, env = hub
    src = write_checkpoint(tmp_path / "src", tiny_config("llama"), shards=2)
    (src / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    assert yarnconv(env, "extend", str(src), "--scale", "4", "-o", str(tmp_path / "out"), "-q").returncode == 0
    return tmp_path / "out"


def _no_token_anywhere(result: subprocess.CompletedProcess[str], *folders: Path) -> None:
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    for folder in folders:
        for f in folder.rglob("*"):
            if f.is_file():
                assert TOKEN.encode() not in f.read_bytes(), f


def test_push_creates_the_repo_and_commits_only_yarnconvs_files_with_the_card(hub, extended: Path) -> None:  # type: ignore[no-untyped-def]
    state, env = hub
    (extended / ".env").write_text("OPENAI_API_KEY=sk-nope\n")  # strays that must stay home
    (extended / ".cache").mkdir()
    (extended / ".cache" / "x.lock").write_text("")
    (extended / "notes.txt").write_text("mine")
    result = yarnconv(env, "push", str(extended), "me/tiny-yarn", "--private", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    repo = state.repos["me/tiny-yarn"]
    assert repo.private and len(repo.commits) == 1 and repo.commits[0]["summary"] == "Upload out (yarnconv)"
    sent = repo.branches["main"]
    assert sorted(sent) == sorted(f["path"] for f in record["files"])
    assert {"config.json", "yarnconv.json", "README.md", "model.safetensors.index.json"} <= set(sent) and not {".env", "notes.txt", ".cache/x.lock"} & set(sent)
    assert sorted(record["left_out"]) == [".cache/x.lock", ".env", "notes.txt"]
    for name in sent:  # every byte arrived: regular files inline, weights through git-LFS
        assert sent[name] == (extended / name).read_bytes(), name
    shards = [n for n in sent if n.endswith(".safetensors")]
    assert len(shards) == 2 and sorted(state.lfs_puts) == sorted(hashlib.sha256(sent[n]).hexdigest() for n in shards)
    card = ModelCard(sent["README.md"].decode())
    assert card.data.license == "apache-2.0" and "yarn" in card.data.tags and "| factor s | 4.0 |" in card.text
    assert all(auth == f"Bearer {TOKEN}" for method, path, auth in state.log if path.startswith("/api/") and "agent" not in path)
    _no_token_anywhere(result, extended)


def test_base_model_set_at_push_goes_into_the_record_and_the_uploaded_card(hub, extended: Path) -> None:  # type: ignore[no-untyped-def]
    state, env = hub
    result = yarnconv(env, "push", str(extended), "me/tiny-named", "--base-model", "SomeOrg/Tiny-Llama", "--json")
    assert result.returncode == 0, result.stderr
    assert ModelCard(state.repos["me/tiny-named"].branches["main"]["README.md"].decode()).data.base_model == "SomeOrg/Tiny-Llama"
    assert json.loads((extended / "yarnconv.json").read_text())["base_model"] == "SomeOrg/Tiny-Llama"
    assert state.repos["me/tiny-named"].branches["main"]["yarnconv.json"] == (extended / "yarnconv.json").read_bytes()


def test_dry_run_lists_files_and_card_and_sends_nothing(hub, extended: Path) -> None:  # type: ignore[no-untyped-def]
    state, env = hub
    before = (extended / "README.md").read_text()
    result = yarnconv(env, "push", str(extended), "me/tiny-yarn", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would push" in result.stdout and "model.safetensors.index.json" in result.stdout and "| factor s | 4.0 |" in result.stdout
    assert not [entry for entry in state.log if "/api/agent" not in entry[1]] and (extended / "README.md").read_text() == before
    _no_token_anywhere(result, extended)


def test_revision_pr_and_patterns(hub, extended: Path) -> None:  # type: ignore[no-untyped-def]
    state, env = hub
    assert yarnconv(env, "push", str(extended), "me/tiny-yarn", "--revision", "dev", "--include", "*.json,README.md", "--commit-message", "configs first").returncode == 0
    repo = state.repos["me/tiny-yarn"]
    assert repo.commits[-1]["summary"] == "configs first" and repo.commits[-1]["revision"] == "dev"
    assert not any(n.endswith(".safetensors") for n in repo.branches["dev"]) and repo.branches["main"] == {}
    result = yarnconv(env, "push", str(extended), "me/tiny-yarn", "--create-pr", "--exclude", "*.safetensors")
    assert result.returncode == 0 and "/discussions/1" in result.stdout, result.stderr
    assert repo.commits[-1]["pr"] and repo.branches["main"] == {}  # main untouched until the PR is merged
    result = yarnconv(env, "push", str(extended), "me/tiny-yarn", "--include", "*.bin")
    assert result.returncode == 1 and "nothing to push" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_push_that_fails_half_way_says_so_and_a_rerun_resumes(hub, extended: Path) -> None:  # type: ignore[no-untyped-def]
    state, env = hub
    state.fail_commits = 1  # the weights go up, then the commit fails
    result = yarnconv(env, "push", str(extended), "me/tiny-yarn", "-q")
    assert result.returncode == 1 and "the Hub refused the push (500" in result.stderr and "re-running resumes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    uploaded = list(state.lfs_puts)
    assert len(uploaded) == 2 and state.repos["me/tiny-yarn"].branches["main"] == {}
    result = yarnconv(env, "push", str(extended), "me/tiny-yarn")
    assert result.returncode == 0, result.stderr
    assert state.lfs_puts == uploaded  # the LFS objects the Hub already held were not sent again
    assert "model-00001-of-00002.safetensors" in state.repos["me/tiny-yarn"].branches["main"]
    _no_token_anywhere(result, extended)


def test_bad_token_and_unreachable_hub_are_one_line(hub, extended: Path) -> None:  # type: ignore[no-untyped-def]
    _, env = hub
    result = yarnconv({**env, "HF_ENDPOINT": "http://127.0.0.1:9"}, "push", str(extended), "me/tiny-yarn", "-q")
    assert result.returncode == 1 and "cannot reach the Hub" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = yarnconv(env, "push", str(extended), "not-a-repo-id")
    assert result.returncode == 1 and "is not a Hub repo id" in result.stderr
    _no_token_anywhere(result, extended)


def test_hub_id_input_downloads_through_the_hub_api(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state, env = hub
    src = write_checkpoint(tmp_path / "local", tiny_config("qwen2"), shards=1)
    state.add_files("acme/tiny-qwen", {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()})
    result = yarnconv(env, "extend", "acme/tiny-qwen", "--target-context", "131072", "-o", str(tmp_path / "out"), "--json", "-q")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["max_position_embeddings"] == 131072 and config["rope_scaling"]["factor"] == 4.0
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert "acme/tiny-qwen" in json.dumps(record) and any(path.startswith("/acme/tiny-qwen/resolve/") for _, path, _ in state.log)
    result = yarnconv(env, "extend", "acme/missing", "--scale", "4", "-o", str(tmp_path / "out2"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out2").exists(), result.stderr


def test_run_writes_the_recipes_dtype_and_shards_then_pushes(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors import safe_open

    state, env = hub
    src = write_checkpoint(tmp_path / "src", tiny_config("llama"), shards=1)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(f'[source]\nmodel = "{src}"\n[extend]\nscale = 4.0\n[hf]\ndtype = "bf16"\nmax_shard_size = "100KB"\n[verify]\nenabled = true\n[push]\nrepo = "tiny-yarn"\nprivate = true\n')
    dry = yarnconv(env, "run", str(recipe), "--dry-run")
    assert dry.returncode == 0 and "would push OUTPUT -> tiny-yarn (private) (with --push)" in dry.stdout, dry.stderr
    result = yarnconv(env, "run", str(recipe), "-o", str(tmp_path / "out"), "--push", "--json", "-q")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    shards = sorted((tmp_path / "out").glob("model-*.safetensors"))
    assert len(shards) > 1 and record["hf"]["verify"]["ok"]
    for shard in shards:
        with safe_open(shard, "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118 (safe_open is not iterable)
    assert not list(tmp_path.glob(".yarnconv-run-*"))  # the unconverted extension beside it is gone
    repo = state.repos["me/tiny-yarn"]  # the namespace came from whoami
    assert repo.private and {"yarnconv-recipe.toml", "README.md", "model.safetensors.index.json"} <= set(repo.branches["main"])
    assert record["push"][0]["repo_id"] == "me/tiny-yarn"
    card = repo.branches["main"]["README.md"].decode()
    assert "cast to bfloat16" in card and "byte for byte" not in card  # the card does not claim the source's bytes
    _no_token_anywhere(result, tmp_path / "out")
