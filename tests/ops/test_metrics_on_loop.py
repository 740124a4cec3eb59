"""The metrics endpoint collects on the event loop (``metrics.LoopRegistry``): a callback
gauge reads loop-owned state, so reading it from the HTTP server's thread could see a dict
change size mid-iteration and answer 500."""

from __future__ import annotations

import threading
import urllib.request

import anyio
import anyio.lowlevel
from prometheus_client import CollectorRegistry

from autoextend.metrics import _CallbackVolumeGauge, serve_metrics


async def test_callbacks_run_on_the_loop_and_scrapes_never_fail() -> None:
    registry = CollectorRegistry()
    state: dict[str, float] = {}
    threads: set[int] = set()

    def volumes() -> dict[str, float]:
        threads.add(threading.get_ident())
        return {name: value for name, value in state.items()}

    registry.register(_CallbackVolumeGauge("t_sizes", "test", volumes))
    loop_thread = threading.get_ident()
    async with anyio.create_task_group() as tg:
        _, port = await tg.start(serve_metrics, registry, "127.0.0.1", 0)

        def scrape() -> tuple[int, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.status, r.read().decode()

        async def churn() -> None:
            for i in range(20_000):  # the loop mutates the state the callback reads
                state[f"demo/v{i % 500}"] = float(i)
                if i % 7 == 0:
                    state.pop(f"demo/v{(i * 3) % 500}", None)
                if i % 200 == 0:
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as inner:
            inner.start_soon(churn)
            for _ in range(20):
                status, text = await anyio.to_thread.run_sync(scrape)
                assert status == 200 and "t_sizes" in text
        tg.cancel_scope.cancel()
    assert threads == {loop_thread}
