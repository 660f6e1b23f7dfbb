"""The Hugging Face hub: is it reachable, where its cache is, and data set snapshots.

Data sets named without --data-dir come from their published hub repository through
`huggingface_hub.snapshot_download(repo_type="dataset")`: downloaded once into the standard cache
(`HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub, read when called, not at import),
then read from there. Offline (`HF_HUB_OFFLINE=1`, or the hub does not answer a 2-second probe) the
cached snapshot is read without any network call; with none cached, one error says what to do.
"""

from __future__ import annotations

import os
import socket
from fnmatch import fnmatch
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from qgsa_bench import QGSAError

_TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in _TRUE


def hub_reachable(timeout: float = 2.0) -> bool:
    """A quick DNS + TCP probe, so that offline runs do not wait through the hub client's retries."""
    if hub_offline():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub resolves it, from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


@dataclass
class Snapshot:
    """A data set snapshot on disk and what it is: recorded in every meta.json that reads it."""

    repo_id: str
    revision: str  # the commit hash of the snapshot read
    folder: Path
    downloaded: bool  # False: read from the cache without a network call

    def provenance(self) -> dict:
        return {"data_repo": self.repo_id, "data_revision": self.revision,
                "data_snapshot": str(self.folder), "data_from_cache_only": not self.downloaded}


def parse_hub_uri(value: str) -> tuple[str, str | None] | None:
    """`hf://datasets/owner/name[@revision]` (or `hf://owner/name[@revision]`) -> (repo id, revision)."""
    if not value.startswith("hf://"):
        return None
    rest = value[len("hf://"):].strip("/")
    rest = rest[len("datasets/"):] if rest.startswith("datasets/") else rest
    repo, _, revision = rest.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise QGSAError(f"'{value}' is not a hub data set: write hf://datasets/OWNER/NAME[@REVISION]")
    return repo, revision or None


def dataset_snapshot(repo_id: str, allow_patterns: list[str] | None = None, revision: str | None = None,
                     way_out: str = "") -> Snapshot:
    """The cached snapshot of hub data set `repo_id` (downloading what `allow_patterns` names if the hub
    answers and the cache lacks it). Every failure is one QGSAError naming the repo, the cache folder
    and `way_out`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hub_errors

    cache = hub_cache_dir()
    storage = cache / f"datasets--{repo_id.replace('/', '--')}"
    online = hub_reachable()
    where = f"(looked in {storage})"
    named = f"'{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    # names that older huggingface_hub releases lack are left out of the except clauses
    incomplete = getattr(hub_errors, "IncompleteSnapshotError", ())
    not_cached = tuple(getattr(hub_errors, n) for n in ("LocalEntryNotFoundError", "OfflineModeIsEnabled")
                       if hasattr(hub_errors, n))
    try:
        path = snapshot_download(repo_id, repo_type="dataset", revision=revision, cache_dir=cache,
                                 allow_patterns=allow_patterns, local_files_only=not online)
    except hub_errors.RepositoryNotFoundError:
        raise QGSAError(f"hub data set '{repo_id}' does not exist (or is private/gated and no token was given): "
                        f"check the name; {way_out}") from None
    except hub_errors.RevisionNotFoundError:
        raise QGSAError(f"hub data set '{repo_id}' has no revision '{revision}': give an existing branch, tag "
                        f"or commit") from None
    except incomplete:
        raise QGSAError(f"the cached snapshot of {named} is incomplete {where}: rerun with network to finish "
                        f"the download, or delete that folder; {way_out}") from None
    except not_cached:
        reason = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub is not reachable"
        raise QGSAError(f"hub data set {named} is not in the Hugging Face cache {where} and {reason}: "
                        f"{way_out}") from None
    except (hub_errors.HfHubHTTPError, OSError) as err:
        raise QGSAError(f"could not fetch hub data set '{repo_id}' ({err.__class__.__name__}: "
                        f"{str(err).splitlines()[0][:160]}) {where}: {way_out}") from None
    folder = Path(path)
    wanted = [p for p in folder.rglob("*") if allow_patterns is None or
              any(fnmatch(p.relative_to(folder).as_posix(), pattern) for pattern in allow_patterns)]
    broken = [p for p in wanted if p.is_symlink() and not p.exists()]
    if broken:
        raise QGSAError(f"the cached snapshot of {named} is incomplete {where}: {len(broken)} file(s) point "
                        f"at missing blobs (e.g. {broken[0].relative_to(folder)}); rerun with network or delete "
                        f"that folder; {way_out}")
    return Snapshot(repo_id, folder.name, folder, online)
