"""An offline stand-in for the hub: :class:`LocalHubApi` takes :func:`~crosslens.pretrained.push.push_to_hub`'s
uploads into the local Hugging Face cache, for air-gapped sharing and for tests."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any


class LocalHubApi:
    """The part of ``huggingface_hub.HfApi`` that :func:`push_to_hub` uses, writing into the
    local Hugging Face cache instead of the hub.

    Each upload becomes a commit: a new ``snapshots/<hash>/`` folder holding the previous
    commit's files plus the uploaded ones, with ``refs/<revision>`` pointing at it, which
    is how ``huggingface_hub`` caches downloads. ``hf_hub_download`` with
    ``HF_HUB_OFFLINE=1`` then serves the files. Commit hashes are sha1 of the previous
    commit and the uploaded bytes, so the same uploads give the same cache.
    """

    def __init__(self, hub_cache: str | Path | None = None):
        self._hub_cache = Path(hub_cache) if hub_cache is not None else None
        self.private: dict[str, bool] = {}

    @property
    def hub_cache(self) -> Path:
        if self._hub_cache is not None:
            return self._hub_cache
        import huggingface_hub.constants as hub_constants

        return Path(hub_constants.HF_HUB_CACHE)

    def repo_folder(self, repo_id: str) -> Path:
        return self.hub_cache / ("models--" + repo_id.replace("/", "--"))

    def create_repo(self, repo_id: str, *, private: bool = False, exist_ok: bool = False, **_: Any) -> str:
        folder = self.repo_folder(repo_id)
        if folder.exists() and not exist_ok:
            raise FileExistsError(f"{repo_id} already exists in {self.hub_cache}; pass exist_ok=True.")
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        self.private[repo_id] = private
        return f"local://{folder}"

    def upload_folder(
        self,
        *,
        folder_path: str | Path,
        repo_id: str,
        path_in_repo: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        **_: Any,
    ) -> str:
        files = {
            (Path(path_in_repo or "") / p.relative_to(folder_path)).as_posix(): p.read_bytes()
            for p in sorted(Path(folder_path).rglob("*"))
            if p.is_file()
        }
        return self._commit(repo_id, files, revision or "main", commit_message or "")

    def upload_file(
        self,
        *,
        path_or_fileobj: Any,
        path_in_repo: str,
        repo_id: str,
        revision: str | None = None,
        commit_message: str | None = None,
        **_: Any,
    ) -> str:
        if isinstance(path_or_fileobj, (str, Path)):
            data = Path(path_or_fileobj).read_bytes()
        elif isinstance(path_or_fileobj, bytes):
            data = path_or_fileobj
        else:
            data = path_or_fileobj.read()
        return self._commit(repo_id, {path_in_repo: data}, revision or "main", commit_message or "")

    def _commit(self, repo_id: str, files: dict[str, bytes], revision: str, message: str) -> str:
        folder = self.repo_folder(repo_id)
        if not (folder / "refs").is_dir():
            raise FileNotFoundError(f"{repo_id} does not exist in {self.hub_cache}; call create_repo first.")
        ref = folder / "refs" / revision
        parent = ref.read_text().strip() if ref.exists() else ""
        digest = hashlib.sha1(parent.encode() + message.encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        commit = digest.hexdigest()
        snapshot = folder / "snapshots" / commit
        if parent:
            shutil.copytree(folder / "snapshots" / parent, snapshot, dirs_exist_ok=True)
        for name, data in files.items():
            target = snapshot / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        ref.write_text(commit)
        return commit
