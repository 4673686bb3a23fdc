"""A small Hugging Face Hub on 127.0.0.1 for tests: the endpoints the real huggingface_hub client calls
to create a repo and a branch, upload (preupload, git-LFS batch and basic PUT transfer, NDJSON
commit, pull requests) and download (model info, resolve with the Hub's ETag / commit headers).

Large files travel by git-LFS "basic" transfer. The client's default for them, Xet, needs a CAS
service that cannot be served here: tests set ``HF_HUB_DISABLE_XET=1``, the client's own switch,
and say so. Everything else is the real client against real HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict[str, Any]] = field(default_factory=list)
    prs: list[dict[str, bytes]] = field(default_factory=list)


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, authorization)
    fail_commits: int = 0  # answer this many commit calls with 500 (a push that fails half-way)
    lfs_puts: list[str] = field(default_factory=list)

    def add_files(self, repo_id: str, files: dict[str, bytes]) -> None:
        self.repos.setdefault(repo_id, Repo(private=False)).branches["main"].update(files)


def _card_errors(content: str) -> list[dict[str, str]]:
    import yaml

    try:
        meta = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        return [{"message": f"invalid YAML: {exc}"}]
    if not isinstance(meta, dict):
        return [{"message": "metadata must be a mapping"}]
    errors = []
    for key in ("tags",):
        if key in meta and not isinstance(meta[key], list):
            errors.append({"message": f'"{key}" must be an array'})
    if meta.get("base_model_relation") not in (None, "adapter", "merge", "quantized", "finetune"):
        errors.append({"message": '"base_model_relation" must be one of adapter, merge, quantized, finetune'})
    return errors


def _commit_of(files: dict[str, bytes]) -> str:
    """A stable 40-hex commit id for a file tree."""
    return _sha(json.dumps(sorted((k, _sha(v)) for k, v in files.items())).encode())[:40]


def _files_at(repo: Repo | None, rev: str) -> dict[str, bytes] | None:
    """The files of a branch name or of a commit id (the client asks by both)."""
    if repo is None:
        return None
    if rev in repo.branches:
        return repo.branches[rev]
    return next((f for f in repo.branches.values() if _commit_of(f) == rev), None)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, code: int, payload: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None, head: bool = False) -> None:
        data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _route(self, method: str) -> None:
        self.hub.log.append((method, self.path, self.headers.get("Authorization") or ""))
        path = self.path.split("?")[0]
        body = self._body() if method in ("POST", "PUT") else b""
        host = f"http://{self.headers['Host']}"
        m = re.fullmatch(r"/api/repos/create", path)
        if m and method == "POST":
            req = json.loads(body)
            repo_id = f"{req.get('organization') or 'me'}/{req['name']}" if "/" not in req["name"] else req["name"]
            if repo_id in self.hub.repos:
                return self._send(409, {"error": "You already created this model repo", "url": f"{host}/{repo_id}"})
            self.hub.repos[repo_id] = Repo(private=bool(req.get("private")) or req.get("visibility") == "private")
            return self._send(200, {"url": f"{host}/{repo_id}", "name": repo_id})
        if path == "/api/whoami-v2" and method == "GET":
            if not (self.headers.get("Authorization") or "").startswith("Bearer hf_"):
                return self._send(401, {"error": "Invalid credentials in Authorization header"})
            return self._send(200, {"type": "user", "name": "me", "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if path == "/api/validate-yaml" and method == "POST":  # the card's metadata block, as the Hub checks it
            return self._send(200, {"errors": _card_errors(json.loads(body)["content"]), "warnings": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/(.+)", path)
        if m and method == "POST":
            repo = self.hub.repos[m[1]]
            if m[2] in repo.branches:
                return self._send(409, {"error": "Reference already exists"})
            repo.branches[m[2]] = dict(repo.branches["main"])
            return self._send(200, {})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path)
        if m and method == "POST":
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith((".safetensors", ".gguf")) else "regular", "shouldIgnore": False} for f in files]
            return self._send(200, {"files": modes, "commitOid": None})
        m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m and method == "POST":
            objects = []
            for o in json.loads(body)["objects"]:
                entry: dict[str, Any] = {"oid": o["oid"], "size": o["size"]}
                if o["oid"] not in self.hub.lfs:  # objects already held need no upload: re-runs resume
                    entry["actions"] = {"upload": {"href": f"{host}/lfs-upload/{o['oid']}", "header": {}}}
                objects.append(entry)
            return self._send(200, {"transfer": "basic", "objects": objects})
        m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
        if m and method == "PUT":
            if _sha(body) != m[1]:
                return self._send(400, {"error": "sha256 mismatch"})
            self.hub.lfs[m[1]] = body
            self.hub.lfs_puts.append(m[1])
            return self._send(200, {})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path)
        if m and method == "POST":
            return self._commit(m[1], m[2], body, "create_pr=1" in self.path, host)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m and method == "GET":
            files = _files_at(self.hub.repos.get(m[1]), m[2])
            if files is None:
                return self._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
            entries = []
            for k, v in sorted(files.items()):
                entry: dict[str, Any] = {"type": "file", "path": k, "size": len(v), "oid": hashlib.sha1(b"blob %d\0" % len(v) + v).hexdigest()}
                if k.endswith((".safetensors", ".gguf")):
                    entry["lfs"] = {"oid": _sha(v), "size": len(v), "pointerSize": 134}
                entries.append(entry)
            return self._send(200, entries)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
        if m and method == "GET":
            repo = self.hub.repos.get(m[1])
            files = _files_at(repo, (m[2] or "main").replace("%2F", "/"))
            if repo is None or files is None:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return self._send(200, {"id": m[1], "modelId": m[1], "sha": _commit_of(files), "private": repo.private, "siblings": [{"rfilename": k, "size": len(v)} for k, v in sorted(files.items())]})
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and method in ("GET", "HEAD"):
            files = _files_at(self.hub.repos.get(m[1]), m[2]) or {}
            if m[3] not in files:
                return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}, head=method == "HEAD")
            data = files[m[3]]
            headers = {"ETag": f'"{_sha(data)}"', "X-Repo-Commit": _commit_of(files)}
            if m[3].endswith((".safetensors", ".gguf")):
                headers |= {"X-Linked-Etag": f'"{_sha(data)}"', "X-Linked-Size": str(len(data))}
            return self._send(200, headers=headers, raw=data, head=method == "HEAD")
        return self._send(404, {"error": f"no route {method} {path}"})

    def _commit(self, repo_id: str, revision: str, body: bytes, create_pr: bool, host: str) -> None:
        if self.hub.fail_commits > 0:
            self.hub.fail_commits -= 1
            return self._send(500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"})
        repo = self.hub.repos[repo_id]
        revision = revision.replace("%2F", "/")
        header: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            elif item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "lfsFile":
                oid = item["value"]["oid"]
                if oid not in self.hub.lfs:
                    return self._send(400, {"error": f"LFS object {oid} was never uploaded"})
                files[item["value"]["path"]] = self.hub.lfs[oid]
        if revision not in repo.branches:
            return self._send(404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
        oid = _sha(body)[:40]
        commit = {"summary": header.get("summary"), "description": header.get("description"), "files": sorted(files), "revision": revision, "pr": create_pr}
        repo.commits.append(commit)
        if create_pr:
            repo.prs.append({**repo.branches[revision], **files})
            n = len(repo.prs)
            return self._send(200, {"commitUrl": f"{host}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": f"{host}/{repo_id}/discussions/{n}"})
        repo.branches[revision].update(files)
        return self._send(200, {"commitUrl": f"{host}/{repo_id}/commit/{oid}", "commitOid": oid})

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")


def serve() -> tuple[Hub, str, ThreadingHTTPServer]:
    """Start a Hub on a free port; returns (state, endpoint URL, server to shut down)."""
    hub = Hub()
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hub, f"http://127.0.0.1:{server.server_address[1]}", server
