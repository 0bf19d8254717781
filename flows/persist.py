"""Resumable chunks: finished task results kept in the run folder as data, never as code.

A killed screen / generate / design run that is started again with the same output folder loads
the chunks that finished and computes only the rest (:func:`run_chunks`). Each chunk's key is the
task's source code plus a hash of its inputs' *content* (:func:`content_hash`: the same molecules
read twice hash the same, unlike a pickle of tensors, which carries random storage keys).

Why not Prefect's result persistence: its result files are pickles, and the file itself names the
serializer that reads it, so a folder written by someone else runs any code planted in it. Here a
chunk is ``OUT/.chunks/<key>.pt``, a ``torch.save`` of plain containers, strings, numbers and
tensors, read back with ``torch.load(weights_only=True)`` (which refuses anything else); RDKit
molecules travel as RDKit's binary format, crystals as lattice, atomic numbers and fractional
coordinates, generated structures as their tensors. Before use a file must name this format and
its own key and decode into the known types, else it is refused with one line and recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import sys
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch_geometric.data import Data

from pipeline.generate import ChunkResult
from pipeline.relax import Relaxed, RelaxedMolecule

STORE = ".chunks"
FORMAT, VERSION = "ldsm-chunk", 1
# Dataclasses a chunk may hold, by name (never a class named by the file itself).
DATACLASSES = {"ChunkResult": ChunkResult, "Relaxed": Relaxed, "RelaxedMolecule": RelaxedMolecule}


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


class ChunkRefused(ValueError):
    """A stored chunk that is not this format's data (the message says why)."""


def encode(value):
    """``value`` as plain containers, scalars and tensors (what ``weights_only`` loads)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("object arrays are not data")
        return {"__t": "ndarray", "v": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"__t": "tuple", "v": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"__t": "dict", "k": [encode(k) for k in value], "v": [encode(v) for v in value.values()]}  # fmt: skip
    if isinstance(value, Data):
        return {"__t": "Data", "v": encode(value.to_dict())}
    if type(value).__name__ in DATACLASSES and dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"__t": "dataclass", "name": type(value).__name__, "v": encode(fields)}
    module = type(value).__module__
    if module.startswith("rdkit"):
        from rdkit import Chem

        if isinstance(value, Chem.Mol):
            raw = value.ToBinary(Chem.PropertyPickleOptions.AllProps)
            return {"__t": "Mol", "v": torch.frombuffer(bytearray(raw), dtype=torch.uint8)}
    if module.startswith("pymatgen") and type(value).__name__ == "Structure":
        if not value.is_ordered:
            raise TypeError("a disordered structure")
        return {
            "__t": "Structure",
            "lattice": torch.tensor(np.array(value.lattice.matrix)),
            "z": torch.tensor(list(value.atomic_numbers)),
            "frac": torch.tensor(np.array(value.frac_coords)),
        }
    raise TypeError(f"{type(value).__name__} is not stored as data")


def decode(tree):
    """The value :func:`encode` gave ``tree`` for; anything else raises :class:`ChunkRefused`."""
    if tree is None or isinstance(tree, (bool, int, float, str, torch.Tensor)):
        return tree
    if isinstance(tree, list):
        return [decode(v) for v in tree]
    if not isinstance(tree, dict):
        raise ChunkRefused(f"unexpected {type(tree).__name__}")
    tag = tree.get("__t")
    if tag == "ndarray" and isinstance(tree.get("v"), torch.Tensor):
        return tree["v"].numpy()
    if tag == "tuple":
        return tuple(decode(tree["v"]))
    if tag == "dict":
        return dict(zip(decode(tree["k"]), decode(tree["v"]), strict=True))
    if tag == "Data":
        return Data(**decode(tree["v"]))
    if tag == "dataclass" and tree.get("name") in DATACLASSES:
        return DATACLASSES[tree["name"]](**decode(tree["v"]))
    if tag == "Mol" and isinstance(tree.get("v"), torch.Tensor):
        from rdkit import Chem

        return Chem.Mol(tree["v"].numpy().tobytes())
    if tag == "Structure":
        from pymatgen.core import Lattice, Structure

        lattice, z, frac = (tree[k].numpy() for k in ("lattice", "z", "frac"))
        return Structure(Lattice(lattice), z.tolist(), frac, coords_are_cartesian=False)
    raise ChunkRefused(f"unknown entry {tag!r}")


def _source_hash(task_) -> str:
    fn = getattr(task_, "fn", task_)
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = f"{fn.__module__}.{fn.__qualname__}"
    return hashlib.sha256(source.encode()).hexdigest()


class ChunkStore:
    """Finished results of one task in ``run_dir/.chunks``, keyed by task source and inputs."""

    def __init__(self, run_dir: str | Path, task_):
        self.folder = Path(run_dir) / STORE
        self.name = getattr(task_, "name", getattr(task_, "__name__", "task"))
        self.source = _source_hash(task_)

    def key(self, parameters: dict) -> str:
        """The key of the task run with ``parameters``."""
        return content_hash({"task": self.name, "source": self.source, "inputs": parameters})

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str):
        """``(True, value)`` for a stored, verified chunk; ``(False, None)`` when there is none
        or it is refused (one line on stderr names the file and why)."""
        path = self.path(key)
        if not path.exists():
            return False, None
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(record, dict):
                raise ChunkRefused("not a chunk record")
            if (record.get("format"), record.get("version")) != (FORMAT, VERSION):
                raise ChunkRefused(f"not an {FORMAT} v{VERSION} file")
            if record.get("key") != key:
                raise ChunkRefused("it belongs to another chunk")
            return True, decode(record.get("value"))
        except Exception as err:  # torch's refusal of pickled code, truncation, bad content
            reason = " ".join(str(err).split())[:160] or type(err).__name__
            print(f"ldsm: refused {path} ({reason}); recomputing that chunk", file=sys.stderr)
            return False, None

    def save(self, key: str, value) -> bool:
        """Store ``value`` atomically; False (nothing written) when it is not storable data."""
        try:
            tree = encode(value)
        except TypeError as err:
            print(f"ldsm: chunk {key[:12]} not kept ({err})", file=sys.stderr)
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.path(key).with_suffix(".pt.part")
        torch.save({"format": FORMAT, "version": VERSION, "key": key, "value": tree}, partial)
        partial.replace(self.path(key))
        return True


def run_chunks(task_, run_dir: str | Path, calls: list[dict]) -> list:
    """Results of ``task_(**call)`` for every call, in order: stored chunks are loaded, the rest
    are submitted to the flow's task runner and each is stored as soon as it finishes."""
    from prefect.futures import as_completed

    store = ChunkStore(run_dir, task_)
    keys = [store.key(call) for call in calls]
    results: list = [None] * len(calls)
    pending = []
    for k, key in enumerate(keys):
        found, value = store.load(key)
        if found:
            results[k] = value
        else:
            pending.append(k)
    futures = {task_.submit(**calls[k]): k for k in pending}
    for future in as_completed(list(futures)):
        k = futures[future]
        results[k] = future.result()
        store.save(keys[k], results[k])
    return results


def chunk_count(run_dir: str | Path) -> int:
    """How many finished chunks ``run_dir`` keeps."""
    folder = Path(run_dir) / STORE
    return len(list(folder.glob("*.pt"))) if folder.is_dir() else 0
