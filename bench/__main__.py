"""``python -m bench NAME run|render [ARGS]`` (bench/entry.py); ``python -m bench [--quick]``
and ``python -m bench --noop`` are bench/perf.py as before."""

from bench.entry import main

raise SystemExit(main())
