"""Captured CUDA graphs kept by key, up to `LIMIT` of them (`GraphCache`): what the monitor's step
(monitor.py, through `GraphedCall`) and the one-graph guarded step (precision.py) share.

A graph reads its inputs from static tensors captured with it and writes its result to static
tensors too: before each replay the call's inputs are copied into the static ones (one foreach
copy), and the result is valid until the next replay. A key is what makes another graph necessary
(the inputs' shapes and dtypes, the objects read where they are); a caller whose cache is `full`
runs the call eagerly instead of capturing more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable

import torch

LIMIT = 8  # graphs a cache keeps: the shapes a run meets (a last short batch, an eval size) are few


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    static: list  # the inputs the graph reads
    result: Any  # what the graph writes: valid until the next replay
    copied: list[int]  # positions of `static` that a replay copies the call's inputs into


class GraphCache:
    """Captured graphs, one a key, at most `limit`."""

    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self.entries: dict[Hashable, Captured] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.entries

    @property
    def full(self) -> bool:
        return len(self.entries) >= self.limit

    def clear(self) -> None:
        self.entries.clear()

    def capture(self, key: Hashable, static: list, region: Callable[[list], Any], copied: list[int]) -> Captured:
        """Capture `region(static)` as the graph of `key` (the caller has run it once eagerly before,
        as capture needs: the kernels loaded, any lazily made state there)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads (pin memory) go on
            result = region(static)
        self.entries[key] = Captured(graph, static, result, copied)
        return self.entries[key]

    def replay(self, key: Hashable, inputs: list, before: Callable[[], None] | None = None) -> Any:
        """The graph of `key` on `inputs` (copied into its static inputs; `before`: more to do on
        the stream before the replay); returns its static result."""
        c = self.entries[key]
        if c.copied:
            torch._foreach_copy_([c.static[i] for i in c.copied], [inputs[i] for i in c.copied])
        if before is not None:
            before()
        c.graph.replay()
        return c.result


class GraphedCall:
    """Calls replayed as CUDA graphs, one a key: the host issues one graph launch instead of a
    kernel launch an op (on a host-bound step, such as the monitor's, the cost is its launches). A
    call is `commit(pure(inputs))`: `pure` only reads (it runs once eagerly on a side stream before
    the capture, as capture needs), `commit` writes what must outlive the call in place and returns
    the result. Keys beyond the cache's limit run eagerly."""

    def __init__(self, pure, commit):
        self.pure, self.commit = pure, commit
        self.graphs = GraphCache()

    def __call__(self, key, inputs: list[torch.Tensor | None], fixed: tuple[int, ...] = ()):
        """`fixed`: positions of inputs the graph reads where they are (constants such as the class
        mask: not copied; another object there is another graph)."""
        key = (key, *(id(inputs[i]) for i in fixed))  # the captured static inputs keep those objects alive
        if key not in self.graphs:
            if self.graphs.full:
                return self.commit(self.pure(inputs))
            static = [x if x is None or i in fixed else x.clone() for i, x in enumerate(inputs)]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.pure(static)
            torch.cuda.current_stream().wait_stream(side)
            copied = [i for i, x in enumerate(static) if x is not None and i not in fixed]
            self.graphs.capture(key, static, lambda st: self.commit(self.pure(st)), copied)
        return self.graphs.replay(key, inputs)
