"""The cost cache shared by concurrent searches: no entry lost, no file half-written."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from segnas.cost.measure import CACHE_FORMAT

WRITER = """
import sys, time
from pathlib import Path
from segnas.cost.measure import store_in_cache
folder = Path(sys.argv[1]).parent
(folder / f"ready-{sys.argv[2]}").touch()
while not (folder / "go").exists():  # both writers start together, after their slow imports
    time.sleep(0.01)
for index in range(int(sys.argv[3])):
    store_in_cache(Path(sys.argv[1]), f"{sys.argv[2]}-{index}", {"memory_bytes": index})
"""


def test_two_processes_adding_entries_at_once_lose_none(tmp_path: Path) -> None:
    cache = tmp_path / "cost_cache.json"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(cache), name, "100"]) for name in ("a", "b")]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{name}").exists() for name in "ab") and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]
    entries = CACHE_FORMAT.read_json(cache)["entries"]
    assert sorted(entries) == sorted(f"{name}-{index}" for name in ("a", "b") for index in range(100))
