#!/usr/bin/env bash
# Two fresh venvs from requirements/lock.txt must have identical `pip freeze` output:
# the lock pins every package, transitive ones included (`make lock-check`).
set -euo pipefail
PY=${1:-python3}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for n in a b; do
  "$PY" -m venv "$work/$n"
  "$work/$n/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps \
    -r requirements/lock.txt 2>&1 | grep -v 'is ignored' || true
  "$work/$n/bin/pip" freeze --all > "$work/$n.txt"
done
if diff -u "$work/a.txt" "$work/b.txt"; then
  echo "lock-check: two fresh venvs freeze identically ($(wc -l < "$work/a.txt") packages)"
else
  echo "lock-check: the two venvs differ (above)" >&2
  exit 1
fi
# And the freeze is the lock: every locked pin is what got installed.
"$work/a/bin/python" - "$work/a.txt" <<'PY'
import sys
sys.path.insert(0, "requirements")
from unpinned import ROOT, _pins
locked = _pins((ROOT / "requirements" / "lock.txt").read_text().splitlines())
frozen = _pins(open(sys.argv[1]).read().splitlines())
wrong = {name: version for name, version in locked.items() if frozen.get(name) != version}
assert not wrong, f"installed differs from the lock: {wrong}"
print(f"lock-check: all {len(locked)} locked pins installed exactly")
PY
