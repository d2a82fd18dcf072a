"""The diff record store: the newest in memory, every record to the log, rotation."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from sidecar.serve.diff_store import DiffStore


def record(i: int, canary: str = "v2", rule: str = "api") -> dict[str, Any]:
    return {"time": f"t{i}", "rule": rule, "canary": {"name": canary}, "n": i}


def test_keeps_the_newest_and_filters() -> None:
    store = DiffStore(keep=3)
    for i in range(5):
        store.add(record(i, canary="v2" if i % 2 else "v3"))
    assert len(store) == 3
    assert [r["n"] for r in store.query()] == [4, 3, 2]  # newest first
    assert [r["n"] for r in store.query(canary="v2")] == [3]
    assert [r["n"] for r in store.query(rule="api", limit=2)] == [4, 3]
    assert store.query(limit=0) == []
    assert store.query(rule="other") == []


def test_appends_json_lines_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "diffs.jsonl"
    line_bytes = len(json.dumps(record(0), separators=(",", ":"))) + 1
    store = DiffStore(log_to=str(path), rotate_bytes=line_bytes * 3)
    for i in range(7):
        store.add(record(i))
    store.close()
    # 0,1,2 rotated to .1, then 3,4,5 rotated again (replacing it), 6 is current
    rotated = [json.loads(x)["n"] for x in (tmp_path / "diffs.jsonl.1").read_text().splitlines()]
    current = [json.loads(x)["n"] for x in path.read_text().splitlines()]
    assert rotated == [3, 4, 5]
    assert current == [6]


def test_resumes_an_existing_file_size(tmp_path: Path) -> None:
    path = tmp_path / "diffs.jsonl"
    path.write_text("x" * 100 + "\n")
    store = DiffStore(log_to=str(path), rotate_bytes=150)
    store.add(record(1))  # 101 + ~60 bytes: past the limit, so rotated
    store.close()
    assert (tmp_path / "diffs.jsonl.1").exists()
    assert not path.exists() or path.read_text() == ""


def test_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    store = DiffStore(log_to="stderr")
    store.add(record(1))
    assert store.flush()
    assert json.loads(capsys.readouterr().err) == record(1)
    store.close()


def test_an_unwritable_log_keeps_records_and_reports_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DiffStore(log_to=str(tmp_path / "missing-dir" / "diffs.jsonl"))
    with caplog.at_level(logging.WARNING, logger="sidecar.diffs"):
        for i in range(5):
            store.add(record(i))
        assert store.flush()
    store.close()
    assert len(store) == 5
    warnings = [r for r in caplog.records if "cannot write the diff log" in r.getMessage()]
    assert len(warnings) == 1


def test_retargeting_keeps_records(tmp_path: Path) -> None:
    store = DiffStore()
    store.add(record(1))
    store.log_to(str(tmp_path / "a.jsonl"))
    store.add(record(2))
    store.close()
    assert [r["n"] for r in store.query()] == [2, 1]
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 1
    with pytest.raises(ValueError, match="keep"):
        DiffStore(keep=0)


def test_a_slow_disk_drops_and_counts_lines_instead_of_holding_them(tmp_path: Path) -> None:
    """The writer thread is blocked (a disk that stalls): at most `pending` lines wait, the
    rest are dropped and counted, and the event loop's add() never blocks."""
    release = threading.Event()
    drops: list[int] = []

    class StalledDisk(DiffStore):
        def _write(self, target: str, line: str) -> None:
            release.wait(10)
            super()._write(target, line)

    store = StalledDisk(
        log_to=str(tmp_path / "d.jsonl"), pending=2, on_drop=lambda: drops.append(1)
    )
    for i in range(20):
        store.add(record(i))  # returns at once although nothing can be written
    assert store.dropped == len(drops) >= 20 - 3  # 2 queued, at most 1 taken by the writer
    release.set()
    store.close()
    written = (tmp_path / "d.jsonl").read_text().splitlines()
    assert len(written) + store.dropped == 20
    assert len(store) == 20  # every record is still served by /diffs
