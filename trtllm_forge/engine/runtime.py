"""Run a built ONNX engine directory with ONNX Runtime: all ranks in one CPU process.

TP ranks of a pipeline stage execute their schedules in lock-step: segment k of
every rank, then the collective between them (summed or concatenated here), then
segment k+1. PP stages run in order, each passing ``hidden_states_out`` on as the
next stage's ``hidden_states_in``. Each rank keeps its own KV cache.

``generate`` is greedy decoding with left padding; ``score`` returns teacher-forced
logits, feeding long inputs in chunks through the KV cache (exact) and starting
a fresh window every ``max_seq_len`` tokens.

Engines of the ``ort`` profile (and any single-rank engine on ``device="cuda"``) run
through IO binding (engine/bound.py) so the KV cache never passes through numpy; the
ort profile's attention wants each row's tokens first, so it decodes right-padded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtllm_forge.engine.bound import CUDA, BoundCache, BoundSession
from trtllm_forge.engine.metadata import read_metadata
from trtllm_forge.engine.onnx.collectives import execute
from trtllm_forge.engine.onnx.names import (
    ATTENTION_MASK,
    HIDDEN_IN,
    HIDDEN_OUT,
    INPUT_IDS,
    LOGITS,
    PAST_PREFIX,
    POSITION_IDS,
    PRESENT_PREFIX,
    past_name,
)
from trtllm_forge.engine.onnx.segments import Step
from trtllm_forge.engine.spec import ModelSpec, heads_per_rank
from trtllm_forge.errors import dependency_error, recipe_error, source_error

PAD_ID = 0  # padding id; masked out, so any valid id works
DEVICES = ("cpu", CUDA)
CUDA_INSTALL = (
    "on a machine with an NVIDIA GPU: pip uninstall onnxruntime && "
    "pip install onnxruntime-gpu==1.31.1 (CUDA 13 and cuDNN 9 libraries, e.g. from the "
    "nvidia-*-cu13 wheels, on LD_LIBRARY_PATH)"
)


def ort_threads() -> int:
    """Intra-op threads: $FORGE_ORT_THREADS, else $OMP_NUM_THREADS, else ORT's default (0)."""
    for var in ("FORGE_ORT_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 0


# ORT's QDQ fusions (on by default) replace DequantizeLinear -> MatMul with its integer and
# 4-bit kernels, which quantize the activations of weight-only layers on the fly (logits of a
# weight-only SmolLM2 engine moved by ~2) and reject float8 inputs (FP8 engines fail to load).
# These documented session keys (onnxruntime_session_options_config_keys.h) keep the Q/DQ
# nodes as the lowering wrote them, so the engine computes what the checkpoint means; ORT
# then folds each constant weight's DequantizeLinear into a float32 initializer once, at load.
QDQ_AS_WRITTEN = {
    "session.disable_quant_qdq": "1",  # no QDQ propagation / selector-action fusions
    "session.disable_double_qdq_remover": "1",  # Q->DQ->Q->DQ chains are not merged either
}


def _import_onnxruntime() -> Any:
    """onnxruntime, imported with its telemetry off.

    On Linux, onnxruntime 1.31 starts its 1DS telemetry when the native library loads
    (core/platform/posix/telemetry_1ds.cc, device_id.cc): it creates
    ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` with a device id and an offline event
    queue (``deviceid``, ``onnxruntime.db``). A build must write nothing outside $FORGE_HOME,
    so unless the user set it themselves we set ORT_DISABLE_TELEMETRY, which the library
    reads once as it loads: it cannot help if this process imported onnxruntime earlier.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort  # type: ignore[import-untyped,unused-ignore]

    return ort


def cuda_graph_default() -> bool:
    """CUDA graphs for the ort profile's decode steps unless FORGE_CUDA_GRAPH=0."""
    return os.environ.get("FORGE_CUDA_GRAPH", "1").strip() != "0"


def _providers(ort: Any, device: str, cuda_graph: bool = False) -> list[Any]:
    if device not in DEVICES:
        raise recipe_error(f"unknown device {device!r}", hint=f"choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise dependency_error(
            f"device cuda needs onnxruntime-gpu; the installed onnxruntime {ort.__version__} "
            "has no CUDAExecutionProvider",
            hint=CUDA_INSTALL,
        )
    cuda: dict[str, str | int] = {"device_id": 0}
    if cuda_graph:
        cuda["enable_cuda_graph"] = "1"
    return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]


def _session(
    rank_dir: Path, file: str, threads: int, device: str = "cpu", cuda_graph: bool = False
) -> Any:
    ort = _import_onnxruntime()
    providers = _providers(ort, device, cuda_graph)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # A TP engine holds one session per segment per rank; per-session arenas would each keep
    # their peak activation buffers (measured: +0.9 GB on a 135M model at tp=3).
    options.enable_cpu_mem_arena = False
    for key, value in QDQ_AS_WRITTEN.items():
        options.add_session_config_entry(key, value)
    # Idle intra-op threads sleep instead of spinning: a decode step is hundreds of small
    # kernels, and on a CPU shared with other work spinning threads steal the cores the
    # kernels need (SmolLM2 ort engine, 2 threads, load 9 on 2 cores: 185 → 79 ms/token).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(rank_dir / file), options, providers=providers)
    if device == CUDA and session.get_providers()[0] != "CUDAExecutionProvider":
        raise dependency_error(
            "CUDAExecutionProvider could not start (no CUDA GPU visible, or the CUDA 13 / "
            "cuDNN 9 libraries onnxruntime-gpu links are missing)",
            hint=CUDA_INSTALL,
        )
    return session


@dataclass
class _Rank:
    rank: int
    tp_rank: int
    pp_rank: int
    layers: range
    steps: list[Step]
    sessions: list[Any]  # per step: its InferenceSession (None for a collective)
    kv_heads: int


class KvCache:
    """Per-rank past keys/values, keyed by the graph's ``past_key_values.{layer}.*`` names."""

    def __init__(self, values: dict[int, dict[str, np.ndarray]]) -> None:
        self.values = values


class OrtEngine:
    """An ONNX engine directory loaded into ONNX Runtime sessions (all ranks)."""

    def __init__(
        self,
        engine_dir: Path,
        meta: dict[str, Any],
        ranks: list[_Rank],
        bound: BoundSession | None = None,
    ) -> None:
        self.engine_dir = engine_dir
        self.meta = meta
        self.ranks = ranks
        self.bound = bound  # single-rank IO-binding path (ort profile, or device cuda)
        self.profile = str((meta.get("onnx") or {}).get("profile", "portable"))
        self.tp_size = int(meta["mapping"]["tp_size"])
        self.pp_size = int(meta["mapping"]["pp_size"])
        model = meta["model"]
        self.vocab_size = int(model["vocab_size"])
        self.head_size = int(model["head_size"])
        limits = meta.get("limits", {})
        self.max_batch_size = int(limits.get("max_batch_size", 1 << 30))
        self.max_input_len = int(limits.get("max_input_len", 1 << 30))
        self.max_seq_len = int(limits.get("max_seq_len", 1 << 30))

    @classmethod
    def load(
        cls,
        engine_dir: Path,
        *,
        threads: int | None = None,
        device: str = "cpu",
        cuda_graph: bool | None = None,
    ) -> OrtEngine:
        """``cuda_graph`` (ort profile): replay one-token steps as CUDA graphs (default: on
        for ``device="cuda"`` unless FORGE_CUDA_GRAPH=0; on the CPU, True runs the same
        fixed-buffer step without a graph — engine/graph_step.py)."""
        engine_dir = Path(engine_dir)
        meta = read_metadata(engine_dir)
        onnx_meta = meta.get("onnx")
        if not onnx_meta:
            raise source_error(
                f"{engine_dir} ({meta.get('backend')}) holds no ONNX graphs ONNX Runtime could run",
                hint="verify runs onnxruntime and tensorrt builds; rebuild with backend onnxruntime",
            )
        root = engine_dir / onnx_meta.get("root", ".")
        threads = ort_threads() if threads is None else threads
        if device not in DEVICES:
            raise recipe_error(
                f"unknown device {device!r}", hint=f"choose one of {', '.join(DEVICES)}"
            )
        if onnx_meta.get("profile") == "ort" or device == CUDA:
            graphs = onnx_meta.get("profile") == "ort" and (
                device == CUDA and cuda_graph_default() if cuda_graph is None else cuda_graph
            )
            return cls._load_bound(engine_dir, meta, root, threads, device, graphs)
        _, kv_heads = heads_per_rank(ModelSpec(**meta["model"]), int(meta["mapping"]["tp_size"]))
        ranks = []
        for entry in onnx_meta["ranks"]:
            steps = [Step.from_json(s) for s in entry["schedule"]]
            if not steps:
                raise source_error(
                    f"{engine_dir}: rank {entry['rank']} was built without ORT segments"
                )
            sessions = [
                _session(root / entry["dir"], s.file, threads) if s.file else None for s in steps
            ]
            first = int(entry["first_layer"])
            ranks.append(
                _Rank(
                    int(entry["rank"]),
                    int(entry["tp_rank"]),
                    int(entry["pp_rank"]),
                    range(first, first + int(entry["num_layers"])),
                    steps,
                    sessions,
                    kv_heads,
                )
            )
        return cls(engine_dir, meta, ranks)

    @classmethod
    def _load_bound(
        cls,
        engine_dir: Path,
        meta: dict[str, Any],
        root: Path,
        threads: int,
        device: str,
        graphs: bool = False,
    ) -> OrtEngine:
        entries = meta["onnx"]["ranks"]
        if len(entries) != 1 or len(entries[0]["schedule"]) != 1:
            raise recipe_error(
                f"{engine_dir} has {len(entries)} rank(s); device {device} runs single-rank "
                "engines only",
                hint="build with parallel.tp = parallel.pp = 1 for a GPU run, or run on cpu",
            )
        entry = entries[0]
        step = Step.from_json(entry["schedule"][0])
        session = _session(
            root / entry["dir"], step.file or "", threads, device, graphs and device == CUDA
        )
        _, kv_heads = heads_per_rank(ModelSpec(**meta["model"]), 1)
        limits = meta.get("limits", {})
        bound = BoundSession(
            _import_onnxruntime(),
            session,
            device=device,
            shared=meta["onnx"].get("profile") == "ort",
            cache_shape=(kv_heads, int(meta["model"]["head_size"])),
            max_seq_len=int(limits.get("max_seq_len", 0)),
            graphs=graphs,
        )
        first = int(entry["first_layer"])
        rank = _Rank(
            0, 0, 0, range(first, first + int(entry["num_layers"])), [step], [session], kv_heads
        )
        return cls(engine_dir, meta, [rank], bound)

    # -- one forward pass -------------------------------------------------------------

    def new_cache(self, batch: int) -> KvCache | BoundCache:
        if self.bound is not None:
            return self.bound.new_cache(batch)
        empty = np.zeros((batch, self.ranks[0].kv_heads, 0, self.head_size), np.float32)
        return KvCache(
            {
                r.rank: {
                    past_name(layer, kind): empty for layer in r.layers for kind in ("key", "value")
                }
                for r in self.ranks
            }
        )

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        cache: KvCache | BoundCache,
    ) -> np.ndarray:
        """Logits [batch, seq, vocab] for new tokens; ``cache`` is advanced in place.

        The ort profile has no ``position_ids`` input: row b's tokens are its first
        ``sum(attention_mask[b])`` slots (see :meth:`_stream_right_padded`)."""
        common = {
            ATTENTION_MASK: attention_mask.astype(np.int64),
            POSITION_IDS: position_ids.astype(np.int64),
        }
        if self.bound is not None:
            assert isinstance(cache, BoundCache)
            return self.bound.forward({INPUT_IDS: input_ids.astype(np.int64), **common}, cache)
        assert isinstance(cache, KvCache)
        carry: dict[str, np.ndarray] = {INPUT_IDS: input_ids.astype(np.int64)}
        for stage in range(self.pp_size):
            ranks = [r for r in self.ranks if r.pp_rank == stage]
            envs = self._run_stage(ranks, {**common, **carry}, cache)
            for r, env in zip(ranks, envs, strict=True):
                for name in cache.values[r.rank]:
                    cache.values[r.rank][name] = env[name.replace(PAST_PREFIX, PRESENT_PREFIX, 1)]
            out = envs[0]
            carry = (
                {HIDDEN_IN: out[HIDDEN_OUT]} if stage < self.pp_size - 1 else {LOGITS: out[LOGITS]}
            )
        return carry[LOGITS]

    def greedy(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        cache: KvCache | BoundCache,
    ) -> np.ndarray:
        """The argmax token of every new position [batch, seq]; ``cache`` advances in place.
        On CUDA the argmax runs on the device and only the ids reach the host."""
        if self.bound is None or (self.bound.device != CUDA and not self.bound.graphs):
            return self.forward(input_ids, attention_mask, position_ids, cache).argmax(axis=-1)
        assert isinstance(cache, BoundCache)
        feeds = {
            INPUT_IDS: input_ids.astype(np.int64),
            ATTENTION_MASK: attention_mask.astype(np.int64),
            POSITION_IDS: position_ids.astype(np.int64),
        }
        return self.bound.tokens(feeds, cache)

    def _run_stage(
        self, ranks: list[_Rank], feeds: dict[str, np.ndarray], cache: KvCache
    ) -> list[dict[str, np.ndarray]]:
        envs = [{**feeds, **cache.values[r.rank]} for r in ranks]
        for index, step in enumerate(ranks[0].steps):
            if step.kind == "segment":
                for r, env in zip(ranks, envs, strict=True):
                    mine, session = r.steps[index], r.sessions[index]
                    outputs = session.run(mine.outputs, {n: env[n] for n in mine.inputs})
                    env.update(zip(mine.outputs, outputs, strict=True))
            else:
                result = execute(step.op or "", step.attrs, [env[step.inputs[0]] for env in envs])
                for env in envs:
                    env[step.outputs[0]] = result
        return envs

    # -- generation and scoring ----------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        eos_token_id: int | None = None,
    ) -> list[list[int]]:
        """Greedy continuation of each prompt (new tokens only; cut after ``eos_token_id``)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise recipe_error("generate needs at least one prompt and no empty prompt")
        if max_new_tokens < 1:
            raise recipe_error(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
        results: list[list[int]] = []
        for start in range(0, len(prompts), self.max_batch_size):
            results += self._generate_batch(
                prompts[start : start + self.max_batch_size], max_new_tokens
            )
        if eos_token_id is not None:
            results = [r[: r.index(eos_token_id) + 1] if eos_token_id in r else r for r in results]
        return results

    def _generate_batch(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int
    ) -> list[list[int]]:
        tokens = list(self.stream(prompts, max_new_tokens))
        generated: list[list[int]] = np.stack(tokens, axis=1).tolist()
        return generated

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Iterator[np.ndarray]:
        """Greedy decoding of one batch (at most max_batch_size prompts), one step at a time:
        yields each step's new token per prompt, exactly ``max_new_tokens`` times (no EOS stop,
        so a benchmark can time every step and generate() can cut afterwards)."""
        if len(prompts) > self.max_batch_size:
            raise recipe_error(
                f"a batch of {len(prompts)} prompts exceeds the engine's max_batch_size "
                f"{self.max_batch_size}",
                hint="use a smaller batch or rebuild with a larger build.max_batch_size",
            )
        longest = max(len(p) for p in prompts)
        self._check_length(longest, longest + max_new_tokens)
        if self.profile == "ort":
            yield from self._stream_right_padded(prompts, max_new_tokens)
            return
        ids = np.full((len(prompts), longest), PAD_ID, np.int64)
        mask = np.zeros((len(prompts), longest), np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt) :] = prompt
            mask[row, longest - len(prompt) :] = 1
        positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
        cache = self.new_cache(len(prompts))
        token = self.greedy(ids, mask, positions, cache)[:, -1]
        yield token
        for _ in range(max_new_tokens - 1):
            mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            token = self.greedy(token[:, None], mask, positions, cache)[:, -1]
            yield token

    def _stream_right_padded(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int
    ) -> Iterator[np.ndarray]:
        """Greedy decoding for the ort profile: GroupQueryAttention writes row b's step-t
        token at slot len(prompt_b) + t and rotates it by that position, both read from
        the mask's per-row count, so prompts are right-padded and the mask counts tokens."""
        lengths = np.asarray([len(p) for p in prompts], np.int64)
        longest = int(lengths.max())
        ids = np.full((len(prompts), longest), PAD_ID, np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
        cache = self.new_cache(len(prompts))
        assert isinstance(cache, BoundCache) and self.bound is not None
        try:
            rows = np.arange(len(prompts))
            mask = (np.arange(longest)[None] < lengths[:, None]).astype(np.int64)
            token = self.greedy(ids, mask, np.zeros_like(ids), cache)[rows, lengths - 1]
            yield token
            for step in range(1, max_new_tokens):
                width = longest + step
                mask = (np.arange(width)[None] < (lengths + step)[:, None]).astype(np.int64)
                positions = (lengths + step - 1)[:, None]
                token = self.greedy(token[:, None], mask, positions, cache)[:, -1]
                yield token
        finally:  # also when the caller stops early: the buffers serve the next batch
            self.bound.release(cache)

    def _check_length(self, prompt_len: int, total: int) -> None:
        if prompt_len > self.max_input_len or total > self.max_seq_len:
            raise recipe_error(
                f"a prompt of {prompt_len} tokens + new tokens = {total} exceeds the engine limits "
                f"(max_input_len {self.max_input_len}, max_seq_len {self.max_seq_len})",
                hint="shorten the prompts or max_new_tokens, or rebuild with larger build limits",
            )

    def score(self, token_ids: Sequence[int], *, chunk: int | None = None) -> np.ndarray:
        """Teacher-forced logits [len(token_ids), vocab] (float32).

        Tokens are fed ``chunk`` (default max_input_len) at a time through the KV cache;
        every ``max_seq_len`` tokens the context restarts (see :func:`score_windows`).
        """
        chunk = min(chunk or self.max_input_len, self.max_input_len)
        out = []
        for start, stop in score_windows(len(token_ids), self.max_seq_len):
            cache = self.new_cache(1)
            for piece in range(start, stop, chunk):
                ids = np.asarray([token_ids[piece : min(piece + chunk, stop)]], np.int64)
                mask = np.ones((1, piece - start + ids.shape[1]), np.int64)
                positions = np.arange(piece - start, piece - start + ids.shape[1], dtype=np.int64)[
                    None
                ]
                out.append(self.forward(ids, mask, positions, cache)[0])
        return np.concatenate(out, axis=0)


def score_windows(length: int, window: int) -> list[tuple[int, int]]:
    """Independent context windows [start, stop) covering ``length`` tokens."""
    return [(start, min(start + window, length)) for start in range(0, length, window)]


def load_engine(engine_dir: Path, *, threads: int | None = None, device: str = "cpu") -> OrtEngine:
    """Load an engine directory built by the onnxruntime (or tensorrt) backend.

    ``device="cuda"`` runs it on ONNX Runtime's CUDAExecutionProvider (onnxruntime-gpu;
    exit 4 without it or without a GPU), the KV cache kept in GPU memory."""
    return OrtEngine.load(engine_dir, threads=threads, device=device)
