"""fetch: make the source checkpoint available and pin exactly what it is.

- ``source.hf``: resolved through huggingface_hub to a commit sha; the HF cache
  is referenced in place (never copied). The key holds the sha.
- ``source.path``: a local HF-format directory, referenced in place; the key
  holds the blake3 digest of its files (stat-memoised, so unchanged multi-GB
  shards are not re-read).
- pickle-only weights (``source.allow_pickle: true``): loaded with
  ``torch.load(weights_only=True, mmap=True)`` and written as safetensors into the
  artifact with the metadata (sources/pickle_weights.py); later stages never see pickle.
- ``source.gguf``: dequantized into an HF folder inside the artifact; the key
  holds the GGUF file's digest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.errors import ForgeError
from trtllm_forge.pipeline.stage import KeyInputs, StageJob, StageOutput, fields_of, versions
from trtllm_forge.recipe.load import LoadedRecipe
from trtllm_forge.store.digest import digest_json
from trtllm_forge.store.store import Artifact

HF_SUBDIR = "hf"  # where a gguf source's dequantized HF folder lives inside the artifact


class FetchStage:
    name = "fetch"
    version = "1"
    upstream: tuple[str, ...] = ()

    def preflight(self, loaded: LoadedRecipe) -> None:
        """Nothing beyond api.check's: the source itself is checked there (a local one)
        or in key_inputs, from its config.json before the weights (a hub one)."""

    def key_inputs(self, job: StageJob) -> KeyInputs:
        source = job.recipe.source
        fields = fields_of(job.recipe, "source.allow_pickle")
        if source.hf is not None:
            snap = _resolved(job)
            _check_model(job, snap.root)
            # A local folder's tokenizer is checked in preflight; a hub model's files
            # exist only now, still before any stage that reads them.
            from trtllm_forge.pipeline.preflight import check_tokenizer

            check_tokenizer(job.loaded, snap.root, snap.files)
            return _key(snap, {**fields, "source.hf": source.hf}, {"commit": snap.commit})
        if source.path is not None:
            snap = _resolved(job)
            _check_model(job, snap.root)
            return _key(snap, fields, {"content": digest_json(_digests(job, snap))})
        gguf = _gguf_file(job)
        return KeyInputs(
            fields,
            tools=versions("transformers", "gguf", "torch"),
            extra={"gguf": job.store.memo.digest(gguf)},
        )

    def run(self, job: StageJob, out_dir: Path) -> StageOutput:
        source = job.recipe.source
        if source.gguf is not None:
            from trtllm_forge.sources.gguf import gguf_to_hf

            with job.ctx.progress.task("fetch: dequantizing GGUF"):
                gguf_to_hf(_gguf_file(job), out_dir / HF_SUBDIR, progress=job.ctx.progress)
            return StageOutput(info={"kind": "gguf", "file": _gguf_file(job).name})
        snap = _resolved(job)
        if snap.weight_format == "pickle":
            return _from_pickle(job, snap, out_dir)
        if source.hf is not None:
            files = {
                rel: {"size": ref.size, "digest": ref.digest} for rel, ref in snap.files.items()
            }
            # Hub blobs are content-named by the hub; re-hashing them would read every
            # shard on each build, so only existence and size are checked on reuse.
            external = {"root": str(snap.root), "files": files, "rehash": False}
            info = {
                "kind": "hf",
                "repo": source.hf,
                "revision": source.revision,
                "commit": snap.commit,
            }
        else:
            digests = _digests(job, snap)
            files = {rel: {"size": snap.files[rel].size, "digest": d} for rel, d in digests.items()}
            external = {"root": str(snap.root), "files": files, "rehash": True}
            info = {"kind": "path", "path": str(snap.root)}
        return StageOutput(info={**info, "files": len(files)}, external=external)

    def check(self, artifact: Artifact) -> None:
        """Nothing to refuse in a fetch artifact once it exists."""


STAGE = FetchStage()


def _key(snap: Any, fields: dict[str, Any], extra: dict[str, Any]) -> KeyInputs:
    """A pickle-only source's artifact holds the safetensors fetch wrote from it, so
    its key also names that conversion and the torch that loaded the pickle."""
    if snap.weight_format != "pickle":
        return KeyInputs(fields, extra=extra)
    return KeyInputs(fields, tools=versions("torch"), extra={**extra, "weights": "safetensors"})


def _from_pickle(job: StageJob, snap: Any, out_dir: Path) -> StageOutput:
    """Pickle weights (taken only with source.allow_pickle: true) become safetensors in
    this artifact, next to copies of the metadata: no later stage ever reads pickle."""
    from trtllm_forge.sources.pickle_weights import pickle_to_safetensors

    try:
        tensors = pickle_to_safetensors(snap, out_dir / HF_SUBDIR, progress=job.ctx.progress)
    except ForgeError as err:
        field = "hf" if job.recipe.source.hf is not None else "path"
        err.location = err.location or job.loaded.locate(f"source.{field}")
        raise
    info = {"kind": snap.kind, "source": snap.source, "commit": snap.commit}
    return StageOutput(
        info={**info, "weights": "pickle, written as safetensors", "tensors": tensors}
    )


def snapshot_dir(artifact: Artifact) -> Path:
    """The HF-format directory a fetch artifact stands for."""
    root = artifact.external_root
    return root if root is not None else artifact.path / HF_SUBDIR


def _check_model(job: StageJob, root: Path) -> None:
    """Recipe-vs-model cross-checks as soon as the source's config is readable."""
    from trtllm_forge.pipeline.preflight import check_model
    from trtllm_forge.sources.policy import read_config

    check_model(job.loaded, read_config(root))


def _resolved(job: StageJob) -> Any:
    if "snapshot" not in job.scratch:
        job.scratch["snapshot"] = _resolve(job)
    return job.scratch["snapshot"]


def _resolve(job: StageJob) -> Any:
    """Resolve the source; errors point at the recipe field that named it."""
    field = next(f for f in ("hf", "path", "gguf") if getattr(job.recipe.source, f) is not None)
    try:
        return _resolve_source(job)
    except ForgeError as err:
        if err.location is None:
            if job.recipe.source.revision is not None and "revision" in err.message.lower():
                field = "revision"
            err.location = job.loaded.locate(f"source.{field}")
        raise


def _resolve_source(job: StageJob) -> Any:
    source = job.recipe.source
    if source.hf is not None:
        from trtllm_forge.pipeline.preflight import check_model
        from trtllm_forge.sources.hf import resolve_hf

        return resolve_hf(
            source.hf,
            source.revision,
            token=job.ctx.settings.hf_token,
            allow_pickle=source.allow_pickle,
            progress=job.ctx.progress,
            check_config=lambda config: check_model(job.loaded, config),
        )
    from trtllm_forge.sources.local import resolve_local

    assert source.path is not None  # a gguf source is not resolved here (run converts it)
    path = job.loaded.resolve_path(source.path, "source.path")
    return resolve_local(path, allow_pickle=source.allow_pickle)


def _digests(job: StageJob, snap: Any) -> dict[str, str]:
    if "digests" not in job.scratch:
        with job.ctx.progress.task("fetch: hashing source files", total=len(snap.files)) as task:
            out = {}
            for rel in sorted(snap.files):
                out[rel] = job.store.memo.digest(snap.root / rel)
                task.advance()
        job.scratch["digests"] = out
    return dict(job.scratch["digests"])


def _gguf_file(job: StageJob) -> Path:
    from trtllm_forge.pipeline.preflight import named_file

    path = named_file(job.loaded, "source.gguf")
    assert path is not None  # only called for gguf sources
    return path
