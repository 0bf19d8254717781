"""Resumable tasks: results persisted in the run folder, keyed by the content of their inputs.

A killed screen / generate / design run that is started again with the same output folder loads
the results of the tasks that finished (Prefect marks them ``Cached``) and computes only the rest.
The key is the task's source code plus a hash of its inputs' *content*.

Why not Prefect's ``INPUTS`` policy? It hashes a pickle of the inputs, and a pickled torch tensor
carries a random storage key, so the same molecules read twice hash differently and nothing is
ever reused. :func:`content_hash` hashes the tensors' bytes instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from pydantic import BaseModel
from torch_geometric.data import Data


def _update(digest, value) -> None:
    """Feed ``value``'s content into ``digest``, with a type tag so that ``[1]`` != ``"1"``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        digest.update(f"A{value.dtype.str}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Data):
        digest.update(b"D")
        for key in sorted(value.keys()):
            digest.update(key.encode())
            _update(digest, value[key])
    elif isinstance(value, BaseModel):
        digest.update(f"M{type(value).__qualname__}".encode())
        digest.update(value.model_dump_json().encode())
    elif isinstance(value, dict):
        digest.update(f"d{len(value)}".encode())
        for key in sorted(value, key=str):
            _update(digest, key)
            _update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"l{len(value)}".encode())
        for item in value:
            _update(digest, item)
    elif value is None or isinstance(value, (str, int, float, bool, Path)):
        digest.update(f"{type(value).__name__}:{value!r}".encode())
    else:
        raise TypeError(f"no content hash for {type(value).__name__}")


def content_hash(value) -> str:
    """SHA-256 (hex) of the content of ``value``: tensors, arrays, ``Data``, pydantic models,
    and lists / tuples / dicts of them and of plain scalars. Equal content gives equal hashes
    across processes and runs; other types raise ``TypeError``."""
    digest = hashlib.sha256()
    _update(digest, value)
    return digest.hexdigest()


def _inputs_key(context, parameters: dict) -> str:
    return content_hash(parameters)


# The task's source code (a changed check recomputes) and the content of its inputs.
RESUMABLE = TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_inputs_key)


def resumable(task_, run_dir: str | Path):
    """``task_`` with its result persisted under ``run_dir/.prefect``, keyed by :data:`RESUMABLE`.

    The results stay in the run folder: another folder recomputes, and deleting ``.prefect``
    forgets them.
    """
    return task_.with_options(
        persist_result=True,
        cache_policy=RESUMABLE,
        # A Path, not a LocalFileSystem block: Prefect refuses unsaved blocks as task storage.
        result_storage=(Path(run_dir) / ".prefect").resolve(),
    )
