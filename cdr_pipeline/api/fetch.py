"""Many windows at once: carries out :mod:`cdr_pipeline.api.plan` with a pool of workers.

The plan decides; this only runs tasks, longest-expected first, at most ``concurrency`` at a
time, and hands each window's pages back in window order."""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from cdr_pipeline.api import plan
from cdr_pipeline.api.paging import Exchange, follow, page

if TYPE_CHECKING:
    from cdr_pipeline.api.client import CdrApiClient

Window = tuple[int, int]


class Workers:
    """Daemon threads that run tasks. Never joined: when the caller stops (an interrupt, a
    failure) requests still in flight are abandoned, not waited for; the client sends
    nothing new after it is closed."""

    def __init__(self, count: int, run: Callable[[plan.Task], list[Exchange]]) -> None:
        self.count = count
        self._todo: queue.SimpleQueue[plan.Task | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[plan.Task, list[Exchange] | BaseException]] = (
            queue.SimpleQueue()
        )
        for n in range(count):
            name = f"getCdr-{n}"
            threading.Thread(target=self._work, args=(run,), name=name, daemon=True).start()

    def _work(self, run: Callable[[plan.Task], list[Exchange]]) -> None:
        while (task := self._todo.get()) is not None:
            try:
                self._done.put((task, run(task)))
            except BaseException as exc:  # handed to the caller
                self._done.put((task, exc))

    def submit(self, task: plan.Task) -> None:
        self._todo.put(task)

    def next_done(self) -> tuple[plan.Task, list[Exchange] | BaseException]:
        return self._done.get()  # a signal (Ctrl-C) interrupts the wait

    def stop(self) -> None:
        for _ in range(self.count):
            self._todo.put(None)


def fetch_windows(
    client: CdrApiClient, windows: Sequence[Window], src: str | None = None
) -> Iterator[tuple[Window, list[Exchange]]]:
    """Every page of every window, a window at a time in order. After a failure nothing new
    is started (the client sends nothing more after a fatal answer anyway); the windows
    before the first failed one are handed back, then its error is raised."""
    workers = client.settings.concurrency
    if workers <= 1:
        for w in windows:
            yield w, follow(client, w, src)
        return
    split = plan.splitting(len(windows), workers, client.settings.split_stragglers)
    todo = plan.first_pages(windows)
    heapq.heapify(todo)
    firsts: dict[int, Exchange | None] = {}
    share = 0.0  # set by the plan, before any part exists
    pieces: dict[int, dict[Window, list[Exchange]]] = {i: {} for i in range(len(windows))}
    open_pieces = dict.fromkeys(range(len(windows)), 1)
    failed: dict[int, BaseException] = {}

    def run(task: plan.Task) -> list[Exchange]:
        if task.kind == "chain":
            return follow(client, task.window, src, task.first)
        return [page(client, task.window, src, None)]

    def push(tasks: list[plan.Task]) -> None:
        if len(tasks) > 1:  # a chain cut into parts: its first page is set aside
            client.count("chain_splits")
            client.count("pages_discarded")
            open_pieces[tasks[0].index] += len(tasks) - 1
        for task in tasks:
            heapq.heappush(todo, task)

    def done(task: plan.Task, pages: list[Exchange]) -> None:
        first = pages[0]
        if task.kind == "first":
            firsts[task.index] = first
            if first.truncated:
                if not plan.may_be_cut(first, split):
                    push(plan.go_on(task.index, first))
                return  # a chain that may be cut waits for the plan
        elif task.kind == "part" and first.truncated:
            expected = plan.pages_left(first)
            push(plan.continue_or_cut(task.index, task.window, first, expected, share, workers))
            return
        pieces[task.index][task.window] = pages
        open_pieces[task.index] -= 1

    pool = Workers(workers, run)
    try:
        running = 0
        planned = False
        handed = 0
        while running or (todo and not failed):
            while todo and running < workers and not failed:
                pool.submit(heapq.heappop(todo))
                running += 1
            task, outcome = pool.next_done()
            running -= 1
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                done(task, outcome)
            except BaseException as exc:  # handed to the caller, in window order
                failed.setdefault(task.index, exc)
            if not planned and len(firsts) == len(windows):
                planned = True
                chains = plan.plan_chains([firsts[i] for i in range(len(windows))], workers, split)
                share = chains.share
                for _, tasks in itertools.groupby(chains.tasks, key=lambda t: t.index):
                    push(list(tasks))
            while handed < len(windows) and handed not in failed and not open_pieces[handed]:
                parts = pieces.pop(handed)
                yield windows[handed], [p for w in sorted(parts) for p in parts[w]]
                handed += 1
    finally:
        pool.stop()
    if failed:
        raise failed[min(failed)]
