"""Fuzzed GGUF headers and metadata (issue 17): every file is either read or
refused with a ForgeError (exit 5 for a malformed file) — never another
exception, never a hang, never more memory than the file's size suggests.

Cases are mutations of a real GGUF written by the gguf package: flipped,
replaced and inserted bytes, cuts, and counts or lengths overwritten with
extreme values at the offsets where the format keeps them. A sample of them
also goes through the real CLI (`forge recipe check`) under a timeout and
strace: documented exit codes, no traceback, nothing written outside FORGE_HOME.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import tracing
from tests.reliability.harness import forge, record, tiny_recipe
from tests.test_gguf_header import write_small_gguf
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.sources.gguf_header import read_header

pytestmark = pytest.mark.reliability

FLOOR = 5_000  # what the tier promises per run (docs/reliability.md)
EXAMPLES = max(FLOOR, int(os.environ.get("FORGE_GGUF_FUZZ_EXAMPLES", FLOOR)))
CLI_EXAMPLES = 20
EXTREMES = [
    0,
    1,
    2,
    3,
    4,
    8,
    9,
    12,
    13,
    255,
    1 << 16,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 62,
    2**64 - 1,
]


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_small_gguf(tmp_path_factory.mktemp("gguf-seed") / "seed.gguf").read_bytes()


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    header_end = min(len(seed), 700)  # the header of the seed file and the first tensor
    where = st.integers(0, header_end)

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["u64", "u32", "flip", "insert", "delete", "cut"]))
            at = min(draw(where), len(data))
            if op in ("u64", "u32"):
                fmt = "<Q" if op == "u64" else "<I"
                value = draw(st.sampled_from(EXTREMES)) % (1 << (struct.calcsize(fmt) * 8))
                data[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value)
            elif op == "flip":
                data[at : at + 1] = bytes([draw(st.integers(0, 255))])
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            elif op == "delete":
                del data[at : at + draw(st.integers(1, 16))]
            else:
                del data[at:]
        return bytes(data)

    return st.one_of(mutate(), st.binary(max_size=64).map(lambda b: b"GGUF" + b))


def test_fuzzed_gguf_headers_are_read_or_refused(seed: bytes, tmp_path: Path) -> None:
    file = tmp_path / "fuzz.gguf"
    outcomes = {"read": 0, "refused": 0}
    refused: list[bytes] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=2000,  # each case under a timeout: a hang or an endless read fails it
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_mutations(seed))
    def prop(data: bytes) -> None:
        file.write_bytes(data)
        try:
            header = read_header(file)
        except ForgeError as err:
            assert err.code == ExitCode.SOURCE and "fuzz.gguf" in err.message, str(err)
            outcomes["refused"] += 1
            if len(refused) < CLI_EXAMPLES:
                refused.append(data)
            return
        outcomes["read"] += 1
        end = max((t.offset + t.nbytes for t in header.tensors), default=0)
        assert header.data_offset + end <= len(data)  # what was accepted lies in the file

    prop()
    cli = _through_cli(tmp_path, refused)
    record("gguf_fuzz", {"cases": sum(outcomes.values()), **outcomes, "cli": cli})
    assert sum(outcomes.values()) >= EXAMPLES >= FLOOR
    assert outcomes["read"] > 0 and outcomes["refused"] > 0  # both sides reached


def _through_cli(tmp_path: Path, files: list[bytes]) -> int:
    """Refused files through `forge recipe check`: exit 5, located, nothing written outside."""
    home = tmp_path / "home"
    for i, data in enumerate(files):
        work = tmp_path / f"cli{i}"
        work.mkdir()
        (work / "model.gguf").write_bytes(data)
        recipe = tiny_recipe(work / "recipe.yaml", work, source={"gguf": "model.gguf"})
        args = ("recipe", "check", str(recipe))
        if tracing.available():
            run, written = tracing.traced_forge(home, *args, timeout=120, cwd=work)
            assert tracing.outside(written, home, work) == [], "wrote outside FORGE_HOME"
        else:
            run = forge(home, *args, timeout=120, cwd=work)
        assert run.code == 5 and "Traceback" not in run.text, run.text
        assert "recipe.yaml:" in run.err and "model.gguf" in run.err, run.err
    return len(files)
