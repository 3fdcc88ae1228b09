"""Test isolation: every test gets its own FORGE_HOME and a clean, offline environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    home = tmp_path_factory.mktemp("forge-home")
    monkeypatch.setenv("FORGE_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("COLUMNS", "200")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "FORGE_DEBUG", "CI"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny HF checkpoint per architecture, shared by the session (read-only)."""
    from tests.tinymodels import make_tiny_hf

    root = tmp_path_factory.mktemp("tiny-models")
    return {
        arch: make_tiny_hf(arch, root / arch, with_tokenizer=True)
        for arch in ("llama", "mistral", "qwen2")
    }


@pytest.fixture(scope="session")
def recipe_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder recipes/tiny/make_models.py fills, made fresh: a clean clone has none."""
    from tests.tinymodels import RECIPE_ARCHES, make_tiny_hf

    root = tmp_path_factory.mktemp("recipe-models")
    for arch in RECIPE_ARCHES:
        make_tiny_hf(arch, root / arch, with_tokenizer=True)
    return root
