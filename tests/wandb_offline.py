"""Read an offline W&B run (``offline-run-*/run-*.wandb``) without a server.

wandb 0.31 keeps an offline run's config, history and summary only inside the ``.wandb`` file:
a leveldb-log framed stream of ``wandb_internal_pb2.Record`` protobufs. No summary JSON exists
until ``wandb sync``. This reader lets the tests check what W&B will show (a test helper:
no project code reads offline runs, so it lives under tests/).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_FILE_HEADER = struct.Struct("<4sHB")  # ident b":W&B", magic 0xBEE1, version
_BLOCK_LEN = 32768
_REC_HEADER = struct.Struct("<IHB")  # masked crc32c, data length, chunk type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_chunks(path: Path):
    """Yield the payload bytes of each logical record of a leveldb-log file."""
    data = Path(path).read_bytes()
    ident, magic, _version = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B transaction log (header {ident!r}, magic {magic:#x})")
    pos, pending = _FILE_HEADER.size, b""
    while pos + _REC_HEADER.size <= len(data):
        space = _BLOCK_LEN - pos % _BLOCK_LEN
        if space < _REC_HEADER.size:  # block trailer padding
            pos += space
            continue
        _crc, length, kind = _REC_HEADER.unpack_from(data, pos)
        pos += _REC_HEADER.size
        if kind == 0 and length == 0:  # zero padding / preallocated tail
            break
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """``{"run_id", "config", "summary", "history"}`` of one offline run directory."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    out: dict[str, Any] = {"run_id": None, "config": {}, "summary": {}, "history": []}
    for chunk in iter_chunks(files[0]):
        rec = pb.Record()
        rec.ParseFromString(chunk)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run_id"] = rec.run.run_id
            for item in rec.run.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item if i.value_json})
    return out


def find_offline_runs(root: Path) -> list[Path]:
    """All offline run dirs under ``root`` (e.g. a sweep dir)."""
    return sorted(p.parent for p in Path(root).rglob("offline-run-*/run-*.wandb"))
