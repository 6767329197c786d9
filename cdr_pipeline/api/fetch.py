"""Many windows at once: carries out :mod:`cdr_pipeline.api.plan` with a pool of workers.

The plan decides; this only runs tasks, longest-expected first, at most ``concurrency`` at a
time, and hands each window's pages back in window order."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from cdr_pipeline.api import plan
from cdr_pipeline.api.paging import Exchange, follow, page

if TYPE_CHECKING:
    from cdr_pipeline.api.client import CdrApiClient

Window = tuple[int, int]


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
    queue = plan.first_pages(windows)
    heapq.heapify(queue)
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
            heapq.heappush(queue, task)

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

    with ThreadPoolExecutor(workers, thread_name_prefix="getCdr") as pool:
        running: dict[Future[list[Exchange]], plan.Task] = {}
        planned = False
        handed = 0
        while running or (queue and not failed):
            while queue and len(running) < workers and not failed:
                task = heapq.heappop(queue)
                running[pool.submit(run, task)] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                try:
                    done(task, future.result())
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
    if failed:
        raise failed[min(failed)]
