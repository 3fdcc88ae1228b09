"""Run (or plan) a sequence of stages for one recipe.

For each stage: compute its key from the recipe fields it reads and the
content digests of its upstream artifacts; reuse a valid artifact; otherwise
take the key's lock, look again (another process may have just built it),
run the stage into a staging dir and commit it atomically.

The runner knows stages only through pipeline.stage.Stage: which stages there are,
and in which order, is the caller's (the api passes trtllm_forge.stages'), so this
module sits below every model, quantization and engine module.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from trtllm_forge.context import RunContext
from trtllm_forge.errors import ExitCode, ForgeError, recipe_error
from trtllm_forge.faults import point
from trtllm_forge.pipeline.keys import changed_inputs, key_document, stage_key
from trtllm_forge.pipeline.stage import Stage, StageJob, StageOutput
from trtllm_forge.recipe.load import LoadedRecipe
from trtllm_forge.store import events
from trtllm_forge.store.digest import digest_json, short
from trtllm_forge.store.store import Artifact, Invalid, Store, disk_full_error
from trtllm_forge.thirdparty import library_error

if TYPE_CHECKING:
    from trtllm_forge.store.transfer import AutoRemote


@dataclass
class StageResult:
    stage: str
    status: str  # "hit" | "built" | "miss" (plan) | "pending" (plan: upstream not built)
    key: str | None = None
    seconds: float = 0.0
    path: str | None = None
    changed: list[str] = field(default_factory=list)
    note: str | None = None  # e.g. why an existing entry was rejected
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "status": self.status,
            "key": self.key,
            "seconds": round(self.seconds, 4),
            "path": self.path,
            "changed": self.changed,
            "note": self.note,
        }


@dataclass(frozen=True)
class BuildResult(Sequence[StageResult]):
    """What ``Runner.build`` did: each stage's result in order (the sequence itself) and
    the job the stages saw. ``artifacts`` holds each stage's artifact by name; ``job``
    lets a caller derive what a stage derives from them (the sharded checkpoint of
    ``forge export trtllm-ckpt`` is a sub-artifact cached by this runner)."""

    results: tuple[StageResult, ...]
    job: StageJob

    @property
    def artifacts(self) -> dict[str, Artifact]:
        return self.job.upstream

    @overload
    def __getitem__(self, index: int) -> StageResult: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[StageResult]: ...

    def __getitem__(self, index: int | slice) -> StageResult | Sequence[StageResult]:
        return self.results[index]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[StageResult]:
        return iter(self.results)


def recipe_id(loaded: LoadedRecipe) -> str:
    """A stable id for 'this recipe file' (refs remember its last build)."""
    return f"{loaded.recipe.name}-{short(digest_json(str(loaded.path)), 10)}"


class Runner:
    def __init__(
        self,
        loaded: LoadedRecipe,
        ctx: RunContext,
        stages: Sequence[Stage],
        store: Store | None = None,
    ) -> None:
        self.loaded = loaded
        self.ctx = ctx
        self.store = store or Store(ctx.settings.home, lock_timeout_s=ctx.settings.lock_timeout_s)
        self.stages = {stage.name: stage for stage in stages}
        self.order = tuple(self.stages)  # the order given: a stage's upstream comes first
        for index, stage in enumerate(stages):  # the caller's list, fixed in code
            assert set(stage.upstream) <= set(self.order[:index]), (
                f"stage {stage.name} is given before its upstream {stage.upstream}"
            )
        self.previous = self.store.read_ref(recipe_id(loaded))
        self.remote: AutoRemote | None = None  # FORGE_REMOTE, opened when a build starts
        self._uses: dict[str, str] = {}  # sub-artifacts the running stage used: name → key

    def select(self, until: str | None) -> tuple[str, ...]:
        """The stages up to ``until`` (all of them for None), in order."""
        if until is None:
            return self.order
        if until not in self.order:
            raise recipe_error(f"unknown stage '{until}'", hint=self._stages_hint())
        return self.order[: self.order.index(until) + 1]

    def _stages_hint(self) -> str:
        return f"stages are: {', '.join(self.order)}"

    # -- public ------------------------------------------------------------
    def build(
        self,
        *,
        until: str | None = None,
        force: Sequence[str] = (),
        on_result: Callable[[StageResult], None] | None = None,
    ) -> BuildResult:
        names = self.select(until)
        for name in names:  # a missing toolchain or device: exit 4 before any work is done
            self.stages[name].preflight(self.loaded)
        from trtllm_forge.store.transfer import AutoRemote  # a build's, not a plan's

        self.remote = AutoRemote.from_settings(self.store, self.ctx)  # a missing plugin: exit 4
        for name in force:
            if name not in self.stages:
                raise recipe_error(f"unknown stage '{name}' in --force", hint=self._stages_hint())
        job = StageJob(self.loaded, self.ctx, self.store, sub_artifact=self._sub_artifact)
        results: list[StageResult] = []
        record: dict[str, Any] = {}
        try:
            for name in names:
                self._uses = {}
                result, artifact, doc = self._build_one(self.stages[name], job, force=name in force)
                job.upstream[name] = artifact
                record[name] = {
                    "key": artifact.key,
                    "inputs": doc,
                    "path": self.store.recorded(artifact.path),  # relative: a store can move
                    "content_digest": artifact.content_digest,
                    "uses": self._used_paths(artifact),  # so `forge cache gc` keeps them
                }
                results.append(result)
                if on_result:
                    on_result(result)
                self.stages[name].check(artifact)  # verify: a failed gate fails cached builds too
        except BaseException:
            if record:  # remember what did get built, but never mask the stage's own error
                with contextlib.suppress(ForgeError):
                    self._write_ref(record)
            raise
        if record:
            self._write_ref(record)
        return BuildResult(tuple(results), job)

    def plan(self, *, until: str | None = None) -> list[StageResult]:
        job = StageJob(self.loaded, self.ctx, self.store)
        results: list[StageResult] = []
        blocked = False
        for name in self.select(until):
            stage = self.stages[name]
            if blocked:
                results.append(
                    StageResult(name, "pending", note="an upstream stage must run first")
                )
                continue
            t0 = time.perf_counter()
            key, doc = self._key(stage, job)
            found = self.store.lookup(name, key)
            changed = changed_inputs(self._previous_inputs(name), doc)
            if isinstance(found, Artifact):
                job.upstream[name] = found
                results.append(
                    StageResult(name, "hit", key, time.perf_counter() - t0, str(found.path))
                )
            else:
                blocked = True
                note = found.reason if isinstance(found, Invalid) else None
                results.append(
                    StageResult(
                        name, "miss", key, time.perf_counter() - t0, changed=changed, note=note
                    )
                )
        return results

    def walk_keys(
        self, fetch: Callable[[str, str], Artifact | None], *, until: str | None = None
    ) -> None:
        """Each stage's key in order (from its upstream's content), handed to ``fetch``
        for the artifact; stops at the first None (`forge cache pull RECIPE`)."""
        job = StageJob(self.loaded, self.ctx, self.store)
        record: dict[str, Any] = {}
        for name in self.select(until):
            key, doc = self._key(self.stages[name], job)
            artifact = fetch(name, key)
            if artifact is None:
                break
            job.upstream[name] = artifact
            record[name] = {
                "key": key,
                "inputs": doc,
                "path": self.store.recorded(artifact.path),
                "content_digest": artifact.content_digest,
                "uses": self._used_paths(artifact),
            }
        if record:  # like a build: `forge cache gc` keeps what this recipe now uses
            self._write_ref(record)

    # -- internals ---------------------------------------------------------
    def _key(self, stage: Stage, job: StageJob) -> tuple[str, dict[str, Any]]:
        upstream = {name: job.upstream[name].content_digest for name in stage.upstream}
        doc = key_document(stage.name, stage.version, stage.key_inputs(job), upstream)
        return stage_key(doc), doc

    def _used_paths(self, artifact: Artifact) -> dict[str, str]:
        """Sub-artifacts a stage's artifact was made from (its manifest says so when cached)."""
        used = self._uses or dict(artifact.manifest.get("uses") or {})
        return {
            name: self.store.recorded(self.store.artifact_dir(name, key))
            for name, key in sorted(used.items())
        }

    def _previous_inputs(self, name: str) -> dict[str, Any] | None:
        if not self.previous:
            return None
        entry = self.previous.get("stages", {}).get(name)
        return entry.get("inputs") if isinstance(entry, dict) else None

    def _build_one(
        self, stage: Stage, job: StageJob, *, force: bool
    ) -> tuple[StageResult, Artifact, dict[str, Any]]:
        t0 = time.perf_counter()
        key, doc = self._key(stage, job)
        found = self.store.lookup(stage.name, key)
        if isinstance(found, Artifact) and not force:
            self._event("hit", stage.name, key)
            return self._reused(stage.name, "hit", key, found, t0), found, doc
        note = found.reason if isinstance(found, Invalid) else None
        if note:
            self._event("rejected", stage.name, key, reason=note)
            self.ctx.progress.log(f"{stage.name}: cached entry rejected ({note}); rebuilding")
        changed = changed_inputs(self._previous_inputs(stage.name), doc)
        with self.store.lock(key, on_wait=self._on_wait(stage.name, key)):
            reused = None if force else self._reuse_locked(stage.name, key, t0)
            if reused is not None:
                return (*reused, doc)
            artifact = self._produce(stage.name, key, doc, lambda out: stage.run(job, out))
        seconds = time.perf_counter() - t0
        result = StageResult(
            stage.name, "built", key, seconds, str(artifact.path), changed, note, artifact.info
        )
        return result, artifact, doc

    def _reuse_locked(self, name: str, key: str, t0: float) -> tuple[StageResult, Artifact] | None:
        """With the key's lock held: the entry another process committed while this one
        waited, else the remote's; None when the stage must run."""
        found = self.store.lookup(name, key)
        if isinstance(found, Artifact):
            self._event("hit", name, key, waited=True)
            note = "built concurrently by another process"
            return self._reused(name, "hit", key, found, t0, note), found
        pulled = self._pull(name, key)
        if pulled is not None:
            return self._reused(name, "pulled", key, pulled, t0), pulled
        return None

    def _on_wait(self, name: str, key: str) -> Callable[[], None]:
        def waiting() -> None:
            self._event("wait", name, key)
            self.ctx.progress.log(f"{name}: another build holds {short(key)}; waiting")

        return waiting

    @staticmethod
    def _reused(
        name: str, status: str, key: str, artifact: Artifact, t0: float, note: str | None = None
    ) -> StageResult:
        seconds = time.perf_counter() - t0
        return StageResult(
            name, status, key, seconds, str(artifact.path), note=note, info=artifact.info
        )

    def _sub_artifact(
        self,
        name: str,
        version: str,
        document: dict[str, Any],
        producer: Callable[[Path], StageOutput],
    ) -> Artifact:
        doc = {"stage": name, "version": version, **document}
        key = stage_key(doc)
        found = self.store.lookup(name, key)
        if isinstance(found, Artifact):
            self._event("hit", name, key)
        else:
            with self.store.lock(key):
                found = self.store.lookup(name, key)
                if isinstance(found, Artifact):
                    self._event("hit", name, key, waited=True)
                else:
                    found = self._pull(name, key) or self._produce(name, key, doc, producer)
        self._uses[name] = found.key
        return found

    def _produce(
        self, name: str, key: str, doc: dict[str, Any], producer: Callable[[Path], StageOutput]
    ) -> Artifact:
        """Run ``producer`` into a staging dir and commit it (the key's lock is held)."""
        staging = self.store.new_staging_dir(name, key)
        self._event("start", name, key)
        try:
            point(f"stage.{name}.start")
            t0 = time.perf_counter()
            with self.ctx.progress.task(name):
                output = producer(staging)
            seconds = time.perf_counter() - t0
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)  # nothing partial is ever left behind
            self._event("failed", name, key, error=type(exc).__name__)
            _raise_if_disk_full(exc, f"running the {name} stage")
            _raise_if_library_failed(exc, f"running the {name} stage")
            raise
        manifest = {
            "inputs": doc,
            "seconds": round(seconds, 4),
            "info": output.info,
            "recipe": self._excerpt(doc),
            "forge_version": _forge_version(),
        }
        if output.external is not None:
            manifest["external"] = output.external
        if name in self.stages and self._uses:  # a stage's artifact, not a sub-artifact
            manifest["uses"] = dict(self._uses)
        try:
            artifact = self.store.commit(name, key, staging, manifest)
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self._event("failed", name, key, error=type(exc).__name__)
            _raise_if_disk_full(exc, f"committing the {name} artifact")
            raise
        self._event("commit", name, key)
        if self.remote is not None:
            self.remote.push(artifact)  # best effort: a remote that is down is a warning
        return artifact

    def _pull(self, name: str, key: str) -> Artifact | None:
        """The remote's entry for ``key`` (the key's lock is held), or None."""
        return self.remote.pull(name, key) if self.remote is not None else None

    def _event(self, event: str, stage: str, key: str, **extra: Any) -> None:
        events.record(self.store.root, event, stage, key, **extra)

    def _excerpt(self, doc: dict[str, Any]) -> dict[str, Any]:
        return {"name": self.loaded.recipe.name, "fields": doc.get("fields", {})}

    def _write_ref(self, record: dict[str, Any]) -> None:
        ref = self.previous or {}
        stages = dict(ref.get("stages", {}))
        stages.update(record)
        new = {
            "recipe": str(self.loaded.path),
            "name": self.loaded.recipe.name,
            "updated_unix": time.time(),
            "stages": stages,
        }
        try:
            point("runner.ref.before_write")
            self.store.write_ref(recipe_id(self.loaded), new)
            point("runner.ref.after_write")
        except OSError as exc:
            _raise_if_disk_full(exc, "recording the build")
            raise ForgeError(ExitCode.STORE, f"cannot record the build: {exc.strerror}") from None


def _raise_if_disk_full(exc: BaseException, doing: str) -> None:
    """A full disk can surface from any library a stage uses; it is a store problem (exit 6)."""
    full = disk_full_error(exc, doing)
    if full is not None:
        raise full from None


def _raise_if_library_failed(exc: BaseException, doing: str) -> None:
    """An exception from inside ModelOpt, transformers, onnx… is a dependency problem (exit 4)."""
    failure = library_error(exc, doing)
    if failure is not None:
        raise failure from exc


def _forge_version() -> str:
    from trtllm_forge import __version__

    return __version__
