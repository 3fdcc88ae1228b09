"""kill -9 during a layer-wise calibration (issue 19): the rerun resumes at the next layer.

A 4-layer tiny Llama is calibrated with AWQ in ``quantize.calibration.mode: layerwise``
through the real CLI. Three builds in a row SIGKILL themselves right after committing
their first layer (fault point ``calibrate.layer.committed``): after layers 0, 1 and 2.
Each rerun logs the layer it resumes from; the fourth build finishes, and its
calibrate artifact holds the same bytes as an uninterrupted build's in another store.
``forge cache gc`` then finds no leftover of the killed builds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.reliability.harness import KILLED, base_env, forge
from tests.tinymodels import make_tiny_hf

pytestmark = pytest.mark.reliability
FILES = ("config.json", "rank0.safetensors", "linears.safetensors")


def _recipe(tmp_path: Path) -> Path:
    model = make_tiny_hf("llama", tmp_path / "llama", num_hidden_layers=4, with_tokenizer=True)
    recipe = tmp_path / "r.yaml"
    doc = {
        "schema_version": 1,
        "name": "layerwise-kill",
        "source": {"path": str(model)},
        "convert": {"dtype": "float16"},
        "quantize": {
            "method": "awq",
            "group_size": 32,
            "calibration": {"samples": 4, "seq_len": 32, "mode": "layerwise"},
        },
    }
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    return recipe


def _calibrate_dir(stdout: str) -> Path:
    stages = json.loads(stdout)["stages"]
    return Path(next(s["path"] for s in stages if s["stage"] == "calibrate"))


def test_three_kills_resume_to_the_same_bytes(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    build = ("build", str(recipe), "--until", "calibrate", "--json")
    reference = forge(tmp_path / "ref", *build)
    assert reference.code == 0, reference.text
    expected = _calibrate_dir(reference.out)

    home = tmp_path / "home"
    fault = {"FORGE_FAULT": "calibrate.layer.committed"}  # its 1st time in each process
    resumed_from = []
    for kill in range(3):
        run = forge(home, *build, env={**base_env(home), **fault})
        assert run.code == KILLED, run.text
        found = re.findall(r"resuming at layer (\d+) \(", run.err)
        resumed_from.append(int(found[0]) if found else 0)
        leftovers = list((home / "tmp").glob("calibrate-*.layers"))
        assert len(leftovers) == 1, leftovers  # the killed build's committed layers
        assert len(list(leftovers[0].glob("layer-*.json"))) == kill + 1
    final = forge(home, *build)
    assert final.code == 0, final.text
    assert "resuming at layer 3 (layers 0-2 of 4 committed)" in final.err
    assert resumed_from == [0, 1, 2]
    built = _calibrate_dir(final.out)
    for name in FILES:
        assert (built / name).read_bytes() == (expected / name).read_bytes(), name
    assert not list((home / "tmp").glob("*.layers"))  # adopted, then removed once committed
    gc = forge(home, "cache", "gc")
    assert gc.code == 0, gc.text
    assert not [p for p in (home / "tmp").iterdir() if p.name.startswith("calibrate-")]
