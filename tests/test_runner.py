"""The pipeline runner on stand-in stages: plain Python stages written here (our own code,
not mocks of a library) over a real store and a real recipe file. The runner knows stages
only through pipeline.stage.Stage, so these stages exercise all of it: order, keys from
upstream content, hits, --force, --until, preflight before any work, check on hits,
sub-artifacts, the typed build result and the ref a build leaves."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import write_recipe
from trtllm_forge.context import RunContext, Settings
from trtllm_forge.errors import ExitCode, ForgeError, dependency_error
from trtllm_forge.pipeline.runner import BuildResult, Runner, recipe_id
from trtllm_forge.pipeline.stage import KeyInputs, StageJob, StageOutput, fields_of
from trtllm_forge.recipe.load import LoadedRecipe, load_recipe
from trtllm_forge.store.store import Artifact, Store


@dataclass
class Step:
    """A stage that writes ``text`` (plus its upstream files' text) to ``out.txt``."""

    name: str
    upstream: tuple[str, ...] = ()
    text: str = "v1"
    version: str = "1"
    reads: tuple[str, ...] = ()  # recipe fields in the key
    refuse: str | None = None  # preflight refuses with this message
    failing_check: bool = False
    events: list[str] = field(default_factory=list)  # shared log: what ran, in order

    def preflight(self, loaded: LoadedRecipe) -> None:
        self.events.append(f"preflight {self.name}")
        if self.refuse:
            raise dependency_error(self.refuse)

    def key_inputs(self, job: StageJob) -> KeyInputs:
        return KeyInputs(fields_of(job.recipe, *self.reads), extra={"text": self.text})

    def run(self, job: StageJob, out_dir: Path) -> StageOutput:
        self.events.append(f"run {self.name}")
        inputs = [(job.upstream[u].path / "out.txt").read_text() for u in self.upstream]
        (out_dir / "out.txt").write_text("+".join([*inputs, self.text]))
        return StageOutput(info={"made": self.name})

    def check(self, artifact: Artifact) -> None:
        self.events.append(f"check {self.name}")
        if self.failing_check:
            raise ForgeError(ExitCode.GATE, f"{self.name} failed its check")


def _chain(events: list[str]) -> list[Step]:
    return [
        Step("a", reads=("convert.dtype",), events=events),
        Step("b", upstream=("a",), events=events),
        Step("c", upstream=("b",), events=events),
    ]


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedRecipe:
    return load_recipe(write_recipe(tmp_path / "r.yaml", source={"path": "m"}))


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    return RunContext(Settings(home=tmp_path / "home"))


def test_builds_in_order_then_hits_without_running(loaded: LoadedRecipe, ctx: RunContext) -> None:
    events: list[str] = []
    first = Runner(loaded, ctx, _chain(events)).build()
    assert isinstance(first, BuildResult)
    assert [(r.stage, r.status) for r in first] == [("a", "built"), ("b", "built"), ("c", "built")]
    assert [e for e in events if e.startswith("run")] == ["run a", "run b", "run c"]
    assert (first.artifacts["c"].path / "out.txt").read_text() == "v1+v1+v1"
    assert first.artifacts["b"].info == {"made": "b"}

    events.clear()
    second = Runner(loaded, ctx, _chain(events)).build()
    assert [r.status for r in second] == ["hit", "hit", "hit"]
    assert not [e for e in events if e.startswith("run")]
    assert [r.key for r in second] == [r.key for r in first]


def test_a_changed_output_rebuilds_downstream_and_plan_says_so(
    loaded: LoadedRecipe, ctx: RunContext
) -> None:
    Runner(loaded, ctx, _chain([])).build()
    stages = _chain([])
    stages[1].text = "v2"  # b's output changes, so c's upstream digest does
    planned = Runner(loaded, ctx, stages).plan()
    assert [r.status for r in planned] == ["hit", "miss", "pending"]
    rebuilt = Runner(loaded, ctx, stages).build()
    assert [r.status for r in rebuilt] == ["hit", "built", "built"]
    assert (rebuilt.artifacts["c"].path / "out.txt").read_text() == "v1+v2+v1"


def test_plan_names_the_recipe_field_that_changed(tmp_path: Path, ctx: RunContext) -> None:
    path = write_recipe(tmp_path / "r.yaml", source={"path": "m"}, convert={"dtype": "float16"})
    Runner(load_recipe(path), ctx, _chain([])).build()
    write_recipe(path, source={"path": "m"}, convert={"dtype": "bfloat16"})
    planned = Runner(load_recipe(path), ctx, _chain([])).plan()
    assert [(r.status, r.changed) for r in planned] == [
        ("miss", ["convert.dtype"]),
        ("pending", []),
        ("pending", []),
    ]


def test_until_and_force(loaded: LoadedRecipe, ctx: RunContext) -> None:
    events: list[str] = []
    assert [r.stage for r in Runner(loaded, ctx, _chain(events)).build(until="b")] == ["a", "b"]
    assert "preflight c" not in events  # a stage the build does not reach is not asked
    forced = Runner(loaded, ctx, _chain(events)).build(force=["b"])
    assert [r.status for r in forced] == ["hit", "built", "built"]


def test_a_stage_listed_before_its_upstream_is_a_programming_error(
    loaded: LoadedRecipe, ctx: RunContext
) -> None:
    with pytest.raises(AssertionError, match="stage b is given before its upstream"):
        Runner(loaded, ctx, [Step("b", upstream=("a",)), Step("a")])


@pytest.mark.parametrize("option", ["until", "force"])
def test_an_unknown_stage_name_lists_the_stages_given(
    loaded: LoadedRecipe, ctx: RunContext, option: str
) -> None:
    runner = Runner(loaded, ctx, _chain([]))
    with pytest.raises(ForgeError) as caught:
        if option == "until":
            runner.build(until="verify")
        else:
            runner.build(force=["verify"])
    assert caught.value.code == ExitCode.RECIPE
    assert "unknown stage 'verify'" in caught.value.message
    assert caught.value.hint == "stages are: a, b, c"


def test_every_preflight_runs_before_any_stage(loaded: LoadedRecipe, ctx: RunContext) -> None:
    events: list[str] = []
    stages = _chain(events)
    stages[2].refuse = "no toolchain for c"
    with pytest.raises(ForgeError) as caught:
        Runner(loaded, ctx, stages).build()
    assert caught.value.code == ExitCode.DEPENDENCY
    assert events == ["preflight a", "preflight b", "preflight c"]
    assert not any(isinstance(a, Artifact) for a in Store(ctx.settings.home).artifacts())
    assert Runner(loaded, ctx, stages).build(until="b")[-1].status == "built"


def test_check_runs_on_hits_too(loaded: LoadedRecipe, ctx: RunContext) -> None:
    Runner(loaded, ctx, _chain([])).build()
    events: list[str] = []
    stages = _chain(events)
    stages[2].failing_check = True
    with pytest.raises(ForgeError, match="c failed its check") as caught:
        Runner(loaded, ctx, stages).build()
    assert caught.value.code == ExitCode.GATE
    assert events[-1] == "check c" and not [e for e in events if e.startswith("run")]


class Broken(Step):
    def run(self, job: StageJob, out_dir: Path) -> StageOutput:
        (out_dir / "half.txt").write_text("partial")
        raise ForgeError(ExitCode.SOURCE, "broken input")


def test_a_failing_stage_leaves_nothing_and_the_ref_keeps_what_was_built(
    loaded: LoadedRecipe, ctx: RunContext
) -> None:
    stages = [*_chain([])[:2], Broken("c", upstream=("b",))]
    with pytest.raises(ForgeError, match="broken input"):
        Runner(loaded, ctx, stages).build()
    store = Store(ctx.settings.home)
    kept = sorted(a.stage for a in store.artifacts() if isinstance(a, Artifact))
    assert kept == ["a", "b"]
    assert not list(ctx.settings.home.rglob("half.txt"))  # the staging dir went too
    ref = store.read_ref(recipe_id(loaded))
    assert ref is not None and sorted(ref["stages"]) == ["a", "b"]


@dataclass
class Sharded(Step):
    """A stage that derives a cached sub-artifact (as build derives the shard)."""

    made: list[str] = field(default_factory=list)

    def run(self, job: StageJob, out_dir: Path) -> StageOutput:
        assert job.sub_artifact is not None

        def produce(out: Path) -> StageOutput:
            self.made.append("part")
            (out / "part.txt").write_text("part")
            return StageOutput()

        part = job.sub_artifact("part", "1", {"fields": {"n": 1}}, produce)
        (out_dir / "out.txt").write_text((part.path / "part.txt").read_text())
        return StageOutput()


def test_sub_artifacts_are_cached_and_recorded(loaded: LoadedRecipe, ctx: RunContext) -> None:
    made: list[str] = []
    first = Runner(loaded, ctx, [Step("a"), Sharded("s", upstream=("a",), made=made)]).build()
    assert made == ["part"]
    assert sorted(first.artifacts["s"].manifest["uses"]) == ["part"]
    again = Runner(loaded, ctx, [Step("a"), Sharded("s", upstream=("a",), made=made)])
    assert [r.status for r in again.build(force=["s"])] == ["hit", "built"]
    assert made == ["part"]  # the rebuilt stage found its sub-artifact in the store
    ref = Store(ctx.settings.home).read_ref(recipe_id(loaded))
    assert ref is not None and list(ref["stages"]["s"]["uses"]) == ["part"]


def test_hf_token_comes_from_settings_and_stays_out_of_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    settings = Settings.from_env()
    assert settings.hf_token == "hf_secret_value"
    assert "hf_secret_value" not in repr(settings)
    monkeypatch.setenv("HF_TOKEN", "")
    assert Settings.from_env().hf_token is None
