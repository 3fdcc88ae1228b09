"""Engine weights that are the checkpoint's own bytes: referenced in place, not rewritten.

ONNX external data names a file, an offset and a length, so an initializer whose
bytes are a checkpoint tensor unchanged (same dtype, same layout) can point into the
rank's safetensors file instead of being copied into ``model.onnx.data``. The rank
file is hard-linked into the rank folder (external data locations are relative to the
graph's folder), so the engine folder stays complete on its own: in the store the link is one more name of the shard's
inode (trtllm_forge/store/blobs.py), and ``forge export`` copies it like any file.

Linear weights keep the checkpoint's [out, in] layout and the graph transposes them
(engine/onnx/context.py): ONNX Runtime folds a Transpose of an initializer once, when
the session starts, so the MatMul sees the same matrix as when the bytes were stored
transposed.

Where links are impossible (another file system, a file system without links), or where
the graph references less than half of the rank file's bytes (a quantized checkpoint,
whose linear weights the lowering rewrites), the tensors are written to
``model.onnx.data`` as before: an engine folder also travels alone (``forge export``),
and a link to a file it mostly does not use would make every copy carry the rest. The
graph is the same either way.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from trtllm_forge.engine.onnx.graph import ExternalData

# safetensors dtype names (its format spec) to ONNX element types.
SAFETENSORS_TO_ONNX: dict[str, int] = {
    "F32": TensorProto.FLOAT,
    "F16": TensorProto.FLOAT16,
    "BF16": TensorProto.BFLOAT16,
    "I8": TensorProto.INT8,
    "U8": TensorProto.UINT8,
    "I32": TensorProto.INT32,
    "I64": TensorProto.INT64,
    "F8_E4M3": TensorProto.FLOAT8E4M3FN,
}


class SharedWeights:
    """References into one rank file, linked into the rank folder on first use."""

    def __init__(self, source: Path, rank_dir: Path) -> None:
        self.source = Path(source)
        self.link = Path(rank_dir) / self.source.name
        self._start, self._header = _read_header(self.source)
        self._linked: bool | None = None  # None: not tried yet
        self._issued: list[TensorProto] = []
        self.bytes = 0  # bytes referenced instead of written

    def proto(self, tensor: str, name: str) -> TensorProto | None:
        """An external-data initializer ``name`` holding checkpoint tensor ``tensor`` as
        stored; None when it cannot be referenced (the caller writes it)."""
        info = self._header.get(tensor)
        if info is None or info.get("dtype") not in SAFETENSORS_TO_ONNX or not self._link_once():
            return None
        begin, end = (int(v) for v in info["data_offsets"])
        proto = TensorProto()
        proto.name = name
        proto.data_type = SAFETENSORS_TO_ONNX[info["dtype"]]
        proto.dims.extend(int(d) for d in info["shape"])
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self.link.name),
            ("offset", self._start + begin),
            ("length", end - begin),
        ):
            entry = proto.external_data.add()
            entry.key, entry.value = key, str(value)
        self.bytes += end - begin
        self._issued.append(proto)
        return proto

    def settle(self, data: ExternalData) -> None:
        """Keep the link only when the graph references at least half of the file's
        tensor bytes; else copy what it references into ``data`` and drop the link.
        Call before the graph is serialized: the protos are rewritten in place."""
        total = self.source.stat().st_size - self._start
        if not self._linked or 2 * self.bytes >= total:
            return
        with self.link.open("rb") as f:
            for proto in self._issued:
                where = {e.key: int(e.value) for e in proto.external_data if e.key != "location"}
                f.seek(where["offset"])
                data.add_raw(proto, f.read(where["length"]))
        self.link.unlink()
        self._linked, self._issued, self.bytes = False, [], 0

    def _link_once(self) -> bool:
        if self._linked is None:
            try:
                os.link(self.source, self.link)
                self._linked = True
            except OSError:  # EXDEV, EPERM, EMLINK, ...: write the bytes instead
                self._linked = False
        return self._linked

    def describe(self) -> dict[str, Any] | None:
        """The engine.json entry of the rank's shared file (None when nothing is shared)."""
        if not self._linked or not self.bytes:
            return None
        return {"file": self.link.name, "bytes": self.bytes}


def _read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, tensor table) of a safetensors file (its format:
    an 8-byte little-endian header length, the JSON header, then the data)."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header


def check_graph(model_path: Path) -> None:
    """``onnx.checker.check_model(path, full_check=True)`` for a graph whose data files
    may be hard links.

    The checker refuses any external data file with more than one link (a guard
    against links planted to read files outside the folder). The links here are
    forge's own, so the check runs on a copy of the graph beside stand-ins: sparse
    files of the same names and sizes (the checker reads locations and types, not
    the bytes; the ranges are checked here against the real sizes).
    """
    model = onnx.load(str(model_path), load_external_data=False)
    files = _external_files(model, model_path.parent)
    if all(os.stat(p).st_nlink == 1 for p in files.values()):
        onnx.checker.check_model(str(model_path), full_check=True)
        return
    with tempfile.TemporaryDirectory(dir=model_path.parent.parent) as tmp:
        shutil.copyfile(model_path, Path(tmp) / model_path.name)
        for location, real in files.items():
            with (Path(tmp) / location).open("wb") as stand_in:
                stand_in.truncate(real.stat().st_size)
        onnx.checker.check_model(str(Path(tmp) / model_path.name), full_check=True)


def _external_files(model: onnx.ModelProto, folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for tensor in model.graph.initializer:
        where = {item.key: item.value for item in tensor.external_data}
        if "location" not in where:
            continue
        real = folder / where["location"]
        end = int(where.get("offset", 0)) + int(where.get("length", 0))
        if end > real.stat().st_size:
            raise onnx.checker.ValidationError(
                f"{tensor.name} ends at byte {end} of {real}, past its end"
            )
        files[where["location"]] = real
    return files
