"""The contract every stage implements.

A stage declares the recipe fields it reads and the upstream stages it
consumes; its key is the digest of exactly those (plus tool versions), so two
recipes that agree on them share the artifact.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any, Protocol

from trtllm_forge.context import RunContext
from trtllm_forge.recipe.load import LoadedRecipe
from trtllm_forge.recipe.schema import Recipe
from trtllm_forge.store.store import Artifact, Store


@dataclass
class StageJob:
    """Everything a stage may look at. Stages must not read anything else."""

    loaded: LoadedRecipe
    ctx: RunContext
    store: Store
    upstream: dict[str, Artifact] = field(default_factory=dict)
    # Per-run memo so work done to compute a key (e.g. resolving a hub revision)
    # is not repeated by run().
    scratch: dict[str, Any] = field(default_factory=dict)
    # Set by the runner: cache a sub-artifact (e.g. the sharded checkpoint inside
    # build) under its own key: ``sub_artifact(name, version, key_doc, producer)``.
    sub_artifact: (
        Callable[[str, str, dict[str, Any], Callable[[Path], StageOutput]], Artifact] | None
    ) = None

    @property
    def recipe(self) -> Recipe:
        return self.loaded.recipe


@dataclass(frozen=True)
class KeyInputs:
    """What a stage's key is made of. ``fields`` uses dotted recipe paths so
    ``forge plan`` can say which recipe field changed."""

    fields: dict[str, Any]
    tools: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageOutput:
    info: dict[str, Any] = field(default_factory=dict)  # summary shown by inspect / reports
    external: dict[str, Any] | None = None  # files the artifact references but does not hold


class Stage(Protocol):
    """One step of the pipeline. The runner knows stages only through this contract: the
    api hands it the stages, in order (trtllm_forge.stages.pipeline_stages)."""

    name: str
    version: str  # bump when the stage's output for the same inputs changes
    upstream: tuple[str, ...]

    def preflight(self, loaded: LoadedRecipe) -> None:
        """Refuse, before any stage of the build runs, what this stage could not do on
        this machine (a missing toolchain or device: exit 4). Called for every stage a
        build will reach, never by plan."""
        ...

    def key_inputs(self, job: StageJob) -> KeyInputs: ...

    def run(self, job: StageJob, out_dir: Path) -> StageOutput: ...

    def check(self, artifact: Artifact) -> None:
        """Called after a hit or a build, so an artifact can fail the build even when
        cached (verify's gates)."""
        ...


def fields_of(recipe: Recipe, *paths: str) -> dict[str, Any]:
    """Dotted recipe fields → JSON values, e.g. ``fields_of(r, "convert.dtype")``."""
    dumped = recipe.model_dump(mode="json")
    out: dict[str, Any] = {}
    for path in paths:
        value: Any = dumped
        for part in path.split("."):
            value = value[part]
        out[path] = value
    return out


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of packages whose behaviour changes a stage's output."""
    return {name: _installed_version(name) for name in packages}


@cache
def _installed_version(name: str) -> str:
    # Each lookup scans every installed distribution; several stages ask for the same ones.
    found = _version_from_folders(name)
    if found is not None:
        return found
    from importlib import metadata  # email, zipfile, csv…: only where the shortcut gives up

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _version_from_folders(name: str) -> str | None:
    """``metadata.version(name)`` found the way importlib.metadata finds it (the first
    ``*.dist-info``/``*.egg-info`` of the normalized name along sys.path), reading only
    the metadata's header lines: metadata.version parses the whole file, long
    description included, as email, and every no-op build keys all five stages.
    "absent" where no folder has the name; None where this shortcut cannot be sure (a
    zip or egg on sys.path, another distribution finder, no plain Version header): the
    caller asks importlib.metadata then."""
    folders = _distribution_folders()
    if folders is None:
        return None
    folder = folders.get(_normalized(name))
    return "absent" if folder is None else _header_version(folder)


@cache
def _distribution_folders() -> dict[str, str] | None:
    """Normalized distribution name -> its first metadata folder along sys.path (one
    listing for all the versions a run asks for); None where importlib.metadata would
    look somewhere this does not."""
    if any(hasattr(f, "find_distributions") and f is not PathFinder for f in sys.meta_path):
        return None
    folders: dict[str, str] = {}
    for entry in sys.path:
        root = entry or "."
        if root.lower().endswith(".egg") or (os.path.exists(root) and not os.path.isdir(root)):
            return None  # an egg or a zip file: importlib.metadata looks inside
        try:
            children = os.listdir(root)  # importlib.metadata's order, first match wins
        except OSError:
            continue
        for child in children:
            low = child.lower()
            if low.endswith((".dist-info", ".egg-info")):
                key = _normalized(low.rpartition(".")[0].partition("-")[0])
                folders.setdefault(key, os.path.join(root, child))
    return folders


def _normalized(name: str) -> str:
    """importlib.metadata's Prepared.normalize: PEP 503, dashes as underscores."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _header_version(folder: str) -> str | None:
    """The ``Version:`` header of METADATA (PKG-INFO for an egg-info), as the email
    parser importlib.metadata uses returns it; None for anything less plain."""
    for file_name in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(folder, file_name), encoding="utf-8") as meta:
                head = meta.read(65536).partition("\n\n")[0]
        except OSError:
            continue
        lines = head.split("\n")
        for index, line in enumerate(lines):
            key, colon, value = line.partition(":")
            if colon and key.lower() == "version":
                follows = lines[index + 1] if index + 1 < len(lines) else ""
                if follows.startswith((" ", "\t")) or "\r" in head:
                    return None  # a folded or CRLF header: leave it to the email parser
                return value.lstrip(" \t")
        return None
    return None
