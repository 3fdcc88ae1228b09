"""Measured steps that run in their own process (so their memory and CPU are theirs alone).

``python -m bench.steps shard --home H --src CKPT --tp 2`` shards a converted
checkpoint into a store entry exactly as the build stage's ``shard``
sub-artifact does (staging dir, ``shard_checkpoint``, digest + fsync + rename).

``python -m bench.steps digest FILE... --memo DB`` measures blake3 digests of
files: memo miss with the page cache dropped, memo miss from the page cache,
and memo hit. Each prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.measure import cached_fraction, evict, self_cpu_seconds


def shard(home: Path, src: Path, tp: int, pp: int) -> dict[str, Any]:
    from trtllm_forge.checkpoint.shard import shard_checkpoint
    from trtllm_forge.store.digest import digest_json
    from trtllm_forge.store.store import Store

    store = Store(home)
    doc = {
        "stage": "shard",
        "version": "bench",
        "fields": {"parallel.tp": tp, "parallel.pp": pp},
        "upstream": {"checkpoint": str(src)},
    }
    key = digest_json(doc)
    t0 = time.perf_counter()
    with store.lock(key):
        staging = store.new_staging_dir("shard", key)
        summary = shard_checkpoint(src, staging, tp=tp, pp=pp)
        t1 = time.perf_counter()
        artifact = store.commit("shard", key, staging, {"inputs": doc, "info": summary})
    t2 = time.perf_counter()
    return {
        "path": str(artifact.path),
        "shard_s": t1 - t0,
        "commit_s": t2 - t1,
        "total_s": t2 - t0,
        "bytes": summary["bytes"],
    }


def digest(files: list[Path], memo_db: Path) -> dict[str, Any]:
    import blake3

    from trtllm_forge.store.digest import digest_file
    from trtllm_forge.store.memo import DigestMemo

    size = sum(f.stat().st_size for f in files)
    out: dict[str, Any] = {"bytes": size, "files": len(files), "threads_auto": blake3.blake3.AUTO}
    evict(files)
    out["miss_cold_cache"] = _timed(lambda: [digest_file(f) for f in files])
    out["cached_before_warm"] = cached_fraction(files)
    out["miss_warm_cache"] = _timed(lambda: [digest_file(f) for f in files])
    memo_db.unlink(missing_ok=True)
    memo = DigestMemo(memo_db)
    for f in files:
        memo.digest(f)
    memo.close()

    def warm() -> None:  # what a new process does: open the memo, stat and look up every file
        fresh = DigestMemo(memo_db)
        for f in files:
            fresh.digest(f)
        assert fresh.hits == len(files), "memo should have answered every file"
        fresh.close()

    out["hit"] = min((_timed(warm) for _ in range(5)), key=lambda r: r["seconds"])
    return out


def _timed(fn: Any) -> dict[str, float]:
    c0, t0 = self_cpu_seconds(), time.perf_counter()
    fn()
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": self_cpu_seconds() - c0}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.steps")
    sub = parser.add_subparsers(dest="step", required=True)
    s = sub.add_parser("shard")
    s.add_argument("--home", type=Path, required=True)
    s.add_argument("--src", type=Path, required=True)
    s.add_argument("--tp", type=int, default=2)
    s.add_argument("--pp", type=int, default=1)
    d = sub.add_parser("digest")
    d.add_argument("files", type=Path, nargs="+")
    d.add_argument("--memo", type=Path, required=True)
    args = parser.parse_args()
    if args.step == "shard":
        result = shard(args.home, args.src, args.tp, args.pp)
    else:
        result = digest(args.files, args.memo)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
