"""Running batch units (:mod:`casam.batch`) on Dask distributed, or in this process.

``--scheduler local[:N]`` starts a LocalCluster of N worker processes (default: one per 2
cores), each with one Dask thread and ``cores // N`` torch threads, so the cores are not
oversubscribed. ``--scheduler tcp://HOST:PORT`` uses a running cluster. Every worker builds its
predictor once (:class:`PredictorPlugin`) and runs one unit at a time; the client sends only
paths and receives only small outcomes, which it hands on in input order.

A unit whose worker dies is re-run elsewhere by the scheduler (outputs are written atomically,
so the dead worker leaves at most a temporary file, removed at the end of the run).
"""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from distributed import WorkerPlugin

from casam.batch import Outcome, Unit, run_unit
from casam.errors import InputError
from casam.runner import cpu_count, in_order, parse_scheduler

PLUGIN = "casam-predictor"
#: How often the scheduler may lose a worker while running one unit before giving up on it.
ALLOWED_FAILURES = 3


class PredictorPlugin(WorkerPlugin):
    """Worker plugin: one predictor per worker process, built on first use, reused after.

    ``torch_threads``: intra-op threads per running unit (default: ``$CASAM_TORCH_THREADS``,
    else the worker machine's cores divided by the worker's Dask threads).
    """

    name = PLUGIN

    def __init__(self, predictor_kwargs: dict[str, Any], torch_threads: int | None = None):
        self.kwargs = predictor_kwargs
        self.torch_threads = torch_threads
        self._predictor: Any = None
        self._lock: threading.Lock | None = None

    def setup(self, worker: Any) -> None:
        self._lock = threading.Lock()
        env = os.environ.get("CASAM_TORCH_THREADS")
        if self.torch_threads is None:
            self.torch_threads = (
                int(env) if env else max(1, cpu_count() // max(1, worker.state.nthreads))
            )

    def predictor(self) -> Any:
        assert self._lock is not None, "plugin not set up on a worker"
        with self._lock:
            if self._predictor is None:
                import torch

                from casam.predictor import Predictor

                torch.set_num_threads(int(self.torch_threads or 1))
                kwargs = dict(self.kwargs)
                if isinstance(kwargs.get("library"), str):
                    from casam.library import TaskLibrary

                    kwargs["library"] = TaskLibrary(kwargs["library"], read_only=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    self._predictor = Predictor(**kwargs)
            return self._predictor

    def teardown(self, worker: Any) -> None:
        self._predictor = None


def _work_on_worker(command: str, unit: Unit, opts: dict[str, Any]) -> Outcome:
    from distributed import get_worker

    plugin = get_worker().plugins[PLUGIN]
    return run_unit(plugin.predictor(), command, unit, opts)


def _lost(unit: Unit, e: BaseException) -> Outcome:
    msg = f"{unit.image}: no worker could finish this input ({type(e).__name__}: {e})"
    return Outcome(unit.index, unit.image, error=msg.splitlines()[0][:300])


def run_dask(
    client: Any, command: str, units: Sequence[Unit], opts: dict[str, Any]
) -> Iterator[Outcome]:
    """Submit one task per unit and yield the outcomes in input order as they complete."""
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    futures = [
        client.submit(
            _work_on_worker, command, u, opts, key=f"casam-{command}-{run}-{i}", pure=False
        )
        for i, u in enumerate(units)
    ]
    pos = {f.key: i for i, f in enumerate(futures)}

    def arrivals() -> Iterator[tuple[int, Outcome]]:
        for fut in as_completed(futures):
            i = pos[fut.key]
            try:
                yield i, fut.result()
            except Exception as e:  # noqa: BLE001 - KilledWorker, a lost scheduler, ...
                yield i, _lost(units[i], e)
            fut.release()

    try:
        yield from in_order(arrivals(), len(units))
    finally:
        client.cancel([f for f in futures if not f.done()])


def open_client(spec: str, predictor_kwargs: dict[str, Any]) -> Any:
    """A Dask client for ``spec`` with the predictor plugin registered on every worker."""
    import dask
    from distributed import Client, LocalCluster

    address, n = parse_scheduler(spec)
    dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES})
    if n is not None:
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            scheduler_port=0,
        )
        client = Client(cluster)
        threads = max(1, cpu_count() // n)
    else:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise InputError(f"--scheduler {spec}: cannot reach the scheduler ({e})") from None
        threads = None
    client.register_plugin(PredictorPlugin(predictor_kwargs, threads), name=PLUGIN)
    return client


def close_client(client: Any) -> None:
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def dashboard(client: Any) -> str | None:
    """The dashboard's address, or None when the scheduler serves none (no bokeh)."""
    try:
        info = client.scheduler_info()
        if not info.get("services", {}).get("dashboard"):
            return None
        served = client.run_on_scheduler(_has_bokeh)
        return client.dashboard_link if served else None
    except Exception:  # noqa: BLE001 - best effort, only for a hint
        return None


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None
