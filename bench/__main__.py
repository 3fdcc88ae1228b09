"""``python -m bench``: see bench/perf.py."""

from bench.perf import main

raise SystemExit(main())
