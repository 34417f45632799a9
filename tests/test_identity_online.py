"""A hub snapshot's identity read online, before it is downloaded (from the hub's file metadata),
equals the one read from the cache after: the digest activation stores and the weights-hash
cache are keyed by.

The hub is a local HTTP server answering the two requests huggingface_hub makes (a revision's
file metadata, a file's download) for a repo that holds its weights in two formats, as BLOOM and
GPT-2 do. The identities are read in a process of its own, online, with the server as the hub:
huggingface_hub reads its endpoint, offline switch and cache settings once, at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hf_cache import tiny_bloom

REPO = "bigscience/bloom-560m-intermediate"
NOT_LFS = (".json",)
"""What a hub repo keeps in git rather than LFS (its default .gitattributes stores weights in LFS)."""


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hub_revision(model, folder: Path, *, max_shard_size: str | None = None) -> dict[str, bytes]:
    """The files of one revision of a repo that ships both formats: ``save_pretrained``'s
    safetensors (one file, or an index and shards), the same weights as ``pytorch_model.bin``
    (as many shards, with an index where sharded), ``config.json``."""
    model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    shards = sorted(name for name in files if name.endswith(".safetensors"))
    state = list(model.state_dict().items())
    if len(shards) == 1:
        torch.save(dict(state), folder / "pytorch_model.bin")
        return {**files, "pytorch_model.bin": (folder / "pytorch_model.bin").read_bytes()}
    names = [f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin" for i in range(len(shards))]
    weight_map = {}
    for i, name in enumerate(names):
        part = state[i :: len(names)]
        torch.save(dict(part), folder / name)
        files[name] = (folder / name).read_bytes()
        weight_map.update({key: name for key, _ in part})
    files["pytorch_model.bin.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return files


class FakeHub(BaseHTTPRequestHandler):
    revisions: dict[str, tuple[str, dict[str, bytes]]] = {}
    """Revision -> (commit, name -> bytes) of `REPO`."""

    def log_message(self, *args) -> None:
        pass

    def _revision(self, revision: str) -> tuple[str, dict[str, bytes]]:
        return next((commit, files) for name, (commit, files) in self.revisions.items() if revision in (name, commit))

    def _sibling(self, name: str, data: bytes) -> dict:
        sibling = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
        if not name.endswith(NOT_LFS):
            sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return sibling

    def _answer(self, body: bytes, headers: dict[str, str], *, send_body: bool) -> None:
        self.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _serve(self, *, send_body: bool) -> None:
        path = self.path.split("?")[0]
        info = re.fullmatch(rf"/api/models/{REPO}/revision/([^/]+)", path)
        resolve = re.fullmatch(rf"/{REPO}/resolve/([^/]+)/(.+)", path)
        if info:
            commit, files = self._revision(info.group(1))
            siblings = [self._sibling(name, data) for name, data in sorted(files.items())]
            body = json.dumps({"id": REPO, "sha": commit, "siblings": siblings}).encode()
            self._answer(body, {"Content-Type": "application/json"}, send_body=send_body)
        elif resolve:
            commit, files = self._revision(resolve.group(1))
            data = files[resolve.group(2)]
            sibling = self._sibling(resolve.group(2), data)
            etag = sibling["lfs"]["sha256"] if "lfs" in sibling else sibling["blobId"]
            self._answer(data, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, send_body=send_body)
        else:
            self.send_error(404)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)


@contextmanager
def fake_hub(revisions: dict[str, tuple[str, dict[str, bytes]]]) -> Iterator[str]:
    FakeHub.revisions = revisions
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


READ_IDENTITIES = """
import json, sys
from huggingface_hub import hf_hub_download
from crosslens.checkpoints import CheckpointSuite, SnapshotRef
from crosslens.checkpoints.identity import snapshot_identities

repo, loaded = sys.argv[1], json.loads(sys.argv[2])
refs = [SnapshotRef(i, revision, 1000 * (i + 1), None) for i, revision in enumerate(loaded)]
suite = CheckpointSuite("bloom", repo, refs)
before = snapshot_identities(suite)  # online, nothing downloaded yet: from the hub's metadata
for revision, names in loaded.items():  # what from_pretrained downloads: config.json and the safetensors
    for name in names:
        hf_hub_download(repo, name, revision=revision)
after = snapshot_identities(suite)  # a resumed harvest: from the cache
for revision, names in json.loads(sys.argv[3]).items():  # `hf download` of the whole revision
    for name in names:
        hf_hub_download(repo, name, revision=revision)
everything = snapshot_identities(suite)
print(json.dumps({"before": before, "after": after, "everything": everything}))
"""


@pytest.mark.parametrize("symlinks", [True, False], ids=["linked-cache", "cache-without-links"])
def test_a_two_format_snapshot_has_one_identity_before_and_after_download(tmp_path, symlinks):
    revisions = {
        "global_step1000": hub_revision(tiny_bloom(seed=1), tmp_path / "single"),
        "global_step2000": hub_revision(tiny_bloom(seed=2), tmp_path / "sharded", max_shard_size="60KB"),
    }
    sharded = revisions["global_step2000"]
    assert "model.safetensors.index.json" in sharded and "pytorch_model.bin.index.json" in sharded
    assert sum(name.endswith(".safetensors") for name in sharded) >= 2
    hub = {r: (hashlib.sha1(r.encode()).hexdigest(), files) for r, files in revisions.items()}
    loaded = {r: [n for n in files if n == "config.json" or "safetensors" in n] for r, files in revisions.items()}
    rest = {r: sorted(set(files) - set(loaded[r])) for r, files in revisions.items()}
    env = {
        **{key: value for key, value in os.environ.items() if key != "TRANSFORMERS_OFFLINE"},
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_DISABLE_SYMLINKS": "0" if symlinks else "1",
        "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
        "HF_HUB_DISABLE_XET": "1",
    }
    with fake_hub(hub) as endpoint:
        done = subprocess.run(
            [sys.executable, "-c", READ_IDENTITIES, REPO, json.dumps(loaded), json.dumps(rest)],
            env={**env, "HF_ENDPOINT": endpoint},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads(done.stdout.splitlines()[-1])
    snapshot = tmp_path / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots" / hub["global_step1000"][0]
    assert (snapshot / "config.json").is_symlink() == symlinks
    assert read["before"] == read["after"] == read["everything"]
    for (revision, (commit, files)), identity in zip(hub.items(), read["before"]):
        assert identity["commit"] == commit
        assert sorted(identity["files"]) == sorted(loaded[revision])
        for name, sha in identity["files"].items():
            data = files[name]
            # a linked cache names a file by its blob (sha256 in LFS, git's blob id in git); one without
            # links holds its bytes, hashed
            small = name.endswith(NOT_LFS) and symlinks
            assert sha == (git_blob_id(data) if small else hashlib.sha256(data).hexdigest()), name
