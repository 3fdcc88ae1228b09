"""`forge --version` (issue 17: there was none)."""

from __future__ import annotations

from tests.helpers import forge
from trtllm_forge import __version__


def test_version_prints_and_exits_0() -> None:
    run = forge("--version")
    assert run.code == 0, run.err
    assert run.out.strip() == f"forge {__version__}"
