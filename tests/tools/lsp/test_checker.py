"""The checker folds changes that arrive faster than a check into one check."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.tools.lsp.checker import Checker


async def test_a_burst_of_changes_is_one_check_of_the_newest_state() -> None:
    state = {"text": 0}
    seen: list[tuple[str, int]] = []
    done = asyncio.Event()

    def check(group: str) -> None:
        seen.append((group, state["text"]))
        done.set()

    checker = Checker(check)
    task = asyncio.get_running_loop().create_task(checker.run())
    try:
        for keystroke in range(1, 101):  # all before the checker task gets to run
            state["text"] = keystroke
            checker.touch("/rules")
        checker.touch("/other")
        await asyncio.wait_for(done.wait(), 10)
        assert seen == [("/rules", 100), ("/other", 100)]
        assert checker.checks == 2
        # A later change is checked again.
        done.clear()
        state["text"] = 101
        checker.touch("/rules")
        await asyncio.wait_for(done.wait(), 10)
        assert seen[-1] == ("/rules", 101)
    finally:
        task.cancel()


async def test_a_failing_check_does_not_stop_the_checks(caplog: pytest.LogCaptureFixture) -> None:
    done = asyncio.Event()
    calls: list[str] = []

    def check(group: str) -> None:
        calls.append(group)
        if group == "bad":
            raise RuntimeError("a bug")
        done.set()

    checker = Checker(check)
    task = asyncio.get_running_loop().create_task(checker.run())
    try:
        checker.touch("bad")
        checker.touch("good")
        await asyncio.wait_for(done.wait(), 10)
        assert calls == ["bad", "good"]
        assert "checking bad failed" in caplog.text
    finally:
        task.cancel()
