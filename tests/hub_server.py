"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1, for testing the real ``huggingface_hub`` client code.

It serves, from local folders, what the client asks for: a repo's refs (``/api/{type}s/{repo}/refs``), revision
info (``/api/{type}s/{repo}/revision/{rev}``), tree and paths-info listings, and file downloads with HTTP ranges
(``/{repo}/resolve/{rev}/{path}``, ``/datasets/{repo}/resolve/...``). Point ``HF_ENDPOINT`` at :attr:`url`.
Every request is recorded in :attr:`requests`, so tests can check what the client really asked for.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class HubServer:
    """``repos[(repo_type, repo_id)][revision] = local folder``; repo_type is ``model`` or ``dataset``."""

    def __init__(self, repos: dict[tuple[str, str], dict[str, Path]]) -> None:
        self.repos = repos
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                server._handle(self, head=True)

            def do_GET(self) -> None:
                server._handle(self, head=False)

            def do_POST(self) -> None:
                server._handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ routing
    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(f"{h.command} {path}")
        if m := re.match(r"^/api/(model|dataset)s/([^/]+/[^/]+)/refs$", path):
            return self._refs(h, m.group(1), m.group(2))
        if m := re.match(r"^/api/(model|dataset)s/([^/]+/[^/]+)$", path):
            return self._revision(h, m.group(1), m.group(2), "main")
        if m := re.match(r"^/api/(model|dataset)s/([^/]+/[^/]+)/revision/([^/]+)$", path):
            return self._revision(h, m.group(1), m.group(2), m.group(3))
        if m := re.match(r"^/api/(model|dataset)s/([^/]+/[^/]+)/tree/([^/]+)/?(.*)$", path):
            return self._tree(h, m.group(1), m.group(2), m.group(3), m.group(4))
        if m := re.match(r"^/api/(model|dataset)s/([^/]+/[^/]+)/paths-info/([^/]+)$", path):
            return self._paths_info(h, m.group(1), m.group(2), m.group(3))
        if m := re.match(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path):
            return self._resolve(h, "dataset" if m.group(1) else "model", m.group(2), m.group(3), m.group(4), head)
        return self._json(h, {"error": "not found"}, 404, {"X-Error-Code": "RepoNotFound"})

    def _folder(self, repo_type: str, repo_id: str, revision: str) -> Path | None:
        revisions = self.repos.get((repo_type, repo_id), {})
        if revision in revisions:
            return revisions[revision]
        for name, folder in revisions.items():  # a commit sha of a branch
            if _sha(repo_id, name) == revision:
                return folder
        return None

    def _refs(self, h, repo_type: str, repo_id: str) -> None:
        if (repo_type, repo_id) not in self.repos:
            return self._json(h, {"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": _sha(repo_id, n)}
                    for n in self.repos[(repo_type, repo_id)]]
        self._json(h, {"branches": branches, "converts": [], "tags": []})

    def _revision(self, h, repo_type: str, repo_id: str, revision: str) -> None:
        folder = self._folder(repo_type, repo_id, revision)
        if folder is None:
            return self._json(h, {"error": "Revision not found"}, 404, {"X-Error-Code": "RevisionNotFound"})
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        self._json(h, {"id": repo_id, "sha": _sha(repo_id, revision), "siblings": [{"rfilename": f} for f in files]})

    def _entries(self, folder: Path, paths: list[Path]) -> list[dict]:
        entries = []
        for p in paths:
            rel = p.relative_to(folder).as_posix()
            if p.is_dir():
                entries.append({"type": "directory", "path": rel, "oid": _sha(rel, "dir")})
            else:
                entries.append({"type": "file", "path": rel, "size": p.stat().st_size, "oid": _sha(rel, "file")})
        return entries

    def _tree(self, h, repo_type: str, repo_id: str, revision: str, sub: str) -> None:
        folder = self._folder(repo_type, repo_id, revision)
        if folder is None or not (folder / sub).is_dir():
            return self._json(h, {"error": "not found"}, 404, {"X-Error-Code": "EntryNotFound"})
        recursive = "recursive=true" in (urlparse(h.path).query or "").lower()
        children = (folder / sub).rglob("*") if recursive else (folder / sub).iterdir()
        self._json(h, self._entries(folder, sorted(children)))

    def _paths_info(self, h, repo_type: str, repo_id: str, revision: str) -> None:
        folder = self._folder(repo_type, repo_id, revision)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length).decode() if length else ""
        from urllib.parse import parse_qs

        try:
            paths = json.loads(body).get("paths", [])
        except json.JSONDecodeError:
            paths = parse_qs(body).get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        existing = [folder / p for p in paths if folder is not None and (folder / p).exists()]
        self._json(h, self._entries(folder, existing) if folder is not None else [])

    def _resolve(self, h, repo_type: str, repo_id: str, revision: str, rel: str, head: bool) -> None:
        folder = self._folder(repo_type, repo_id, revision)
        if folder is None:
            return self._json(h, {"error": "Revision not found"}, 404, {"X-Error-Code": "RevisionNotFound"})
        file = folder / rel
        if not file.is_file():
            return self._json(h, {"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
        data = file.read_bytes()
        status, start, end = 200, 0, len(data)
        if m := re.match(r"bytes=(\d+)-(\d*)", h.headers.get("Range") or ""):
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, len(data)) if m.group(2) else len(data)
            status = 206
        body = data[start:end]
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("X-Repo-Commit", _sha(repo_id, revision if len(revision) != 40 else revision))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    @staticmethod
    def _json(h, payload, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)


def _sha(repo_id: str, revision: str) -> str:
    """A stable fake commit sha per (repo, branch); a 40-hex revision is already a sha."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
