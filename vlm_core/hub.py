"""Loading pretrained weights from the Hugging Face hub: one quick reachability check, one error.

Without it, an offline machine spends about a minute in the hub client's retries before the
first error; here it asks the hub once (3 s at most), then loads from the local cache only.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Callable, TypeVar

from .errors import OFFLINE_ALTERNATIVES, BackboneUnavailable

HUB = ("huggingface.co", 443)
T = TypeVar("T")


@lru_cache(maxsize=1)
def _hub_answers(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(HUB, timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    return _hub_answers()


def split_revision(repo: str) -> tuple[str, str | None]:
    """``owner/model@revision`` -> (``owner/model``, ``revision``): a hub backbone pinned to a commit, branch or
    tag, so that a later upload to the same name cannot change a table's runs."""
    if "@" in repo and not Path(repo).exists():
        repo, _, revision = repo.rpartition("@")
        return repo, revision or None
    return repo, None


def loaded_revision(model) -> str | None:
    """The hub commit a model was loaded from (transformers keeps it on the config); None for local files."""
    return getattr(getattr(model, "config", None), "_commit_hash", None)


def load_pretrained(kind: str, name: str, repo: str, load: Callable[..., T]) -> T:
    """``load(**kwargs)`` with ``local_files_only=True`` when the hub cannot be reached, and ``revision=`` when
    the name pins one (``repo@revision``); any failure becomes one BackboneUnavailable line naming the
    backbone and the offline alternatives."""
    repo, revision = split_revision(repo)
    local = Path(repo).exists()
    online = local or hub_reachable()
    pinned = {"revision": revision} if revision else {}
    try:
        return load(**pinned) if online else load(local_files_only=True, **pinned)
    except (OSError, ValueError) as err:
        where = ("local path" if local else "Hugging Face hub" if online
                 else "Hugging Face hub (unreachable from this machine, and not in its local cache)")
        raise BackboneUnavailable(
            f"{kind} backbone '{name}' could not be loaded from the {where}"
            + (f" ({repo})" if repo != name else "")
            + f": {str(err).splitlines()[0]}; {OFFLINE_ALTERNATIVES}"
        ) from err
