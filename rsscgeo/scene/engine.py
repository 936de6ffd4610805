"""Where chunk tasks run: Dask distributed, on an embedded or an existing cluster.

Without a scheduler address a run starts an embedded local cluster: by default one
worker of ``workers`` threads inside this process (one model shared by the threads,
nothing to start by hand), or with ``processes`` that many single-threaded worker
processes. With an address (``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``) it uses an
existing cluster. Several local GPUs get one worker each through dask-cuda's
``LocalCUDACluster`` where it is installed.

Each worker receives the model once, through a worker plugin (also on workers that
join later or restart); a task carries only its chunk and returns small per-patch
arrays. The client keeps a bounded window of tasks in flight and yields results in
chunk order, so its memory stays bounded however large the scene.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from distributed import Client, LocalCluster, WorkerPlugin, as_completed

from rsscgeo.errors import ClusterError, OptionError, RsscgeoError, first_line
from rsscgeo.modelfile import LoadedModel
from rsscgeo.scene.grid import Chunk
from rsscgeo.scene.inference import ChunkResult, prepare_model
from rsscgeo.stopping import STOP

# Tasks in flight per worker thread: enough to keep every thread fed while the client
# writes, few enough that out-of-order results waiting for their turn stay small.
IN_FLIGHT_PER_THREAD = 4
# GDAL's block cache (default 5% of RAM) otherwise fills with blocks that are read once
# and keeps growing with the scene; this much still holds the blocks neighbouring
# chunks share (a 256-pixel block row of a 32768-pixel-wide RGB scene is 24 MiB).
GDAL_CACHE_BYTES = 128 * 2**20

# Sending the model to the workers is tried this often when workers are lost meanwhile...
REGISTER_TRIES = 5
# ...waiting this long between tries, so the scheduler notices the loss.
REGISTER_PAUSE_SECONDS = 1.0
# A task that fails on a worker (e.g. one that lost the model) is retried this often.
TASK_RETRIES = 2

# glibc's mallopt parameter number for the mmap threshold (malloc.h).
M_MMAP_THRESHOLD = -3

# The models this process's workers hold, by key (filled by ModelPlugin.setup).
_WORKER_MODELS: dict[str, LoadedModel] = {}


@dataclass
class WorkerSetup:
    """What a worker process needs before its tasks run.

    Attributes:
        key: Name the tasks look the model up by.
        loaded: The model.
        device: ``auto`` (the worker's GPU when it has one), ``cpu`` or ``cuda[:i]``.
        torch_threads: Intra-op threads per worker process; ``None`` divides the
            worker machine's cores among the worker's task threads.
    """

    key: str
    loaded: LoadedModel
    device: str
    torch_threads: int | None

    def apply(self, task_threads: int) -> ExitStack:
        """Put the model on this process's device and tune the process for tasks.

        Returns:
            What undoes the GDAL settings (close it when the worker stops).
        """
        import rasterio

        threads = self.torch_threads or max(1, (os.cpu_count() or 1) // task_threads)
        torch.set_num_threads(threads)
        _large_allocations_from_the_heap()
        undo = ExitStack()
        if "GDAL_CACHEMAX" not in os.environ:
            undo.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        _WORKER_MODELS[self.key] = prepare_model(self.loaded, resolve_device(self.device))
        undo.callback(_WORKER_MODELS.pop, self.key, None)
        return undo


def _large_allocations_from_the_heap() -> None:
    """Undo the cost of the Dask nanny's ``MALLOC_TRIM_THRESHOLD_`` for model tensors.

    Setting that variable freezes glibc's mmap threshold at 128 KiB, so every
    activation tensor is a fresh mmap that the kernel must fault in and zero: the
    bundled model ran at 26 instead of 46 images/s per core. Serving allocations up to
    32 MiB from the heap again restores the speed; Dask still trims the heap's top.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): the variable means nothing there
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)


class ModelPlugin(WorkerPlugin):
    """Sends a ``WorkerSetup`` (with the model) to each worker once and applies it there."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.name = f"rsscgeo-model-{setup.key}"
        self.worker_setup = setup
        self._undo: ExitStack | None = None

    def setup(self, worker: Any) -> None:
        """Apply the setup in the worker's process."""
        self._undo = self.worker_setup.apply(worker.state.nthreads)

    def teardown(self, worker: Any) -> None:
        """Drop the model and restore GDAL's settings."""
        if self._undo is not None:
            self._undo.close()


def _run_chunk(work: Callable[[Chunk, LoadedModel], ChunkResult], chunk: Chunk, key: str) -> Any:
    """The task: one chunk with this worker's copy of the model."""
    loaded = _WORKER_MODELS.get(key)
    if loaded is None:
        raise ClusterError(
            "a Dask worker has no rsscgeo model (its plugin failed to load); check the "
            "worker's log, e.g. for a missing GPU or too little memory."
        )
    return work(chunk, loaded)


def resolve_device(name: str) -> torch.device:
    """``auto`` (the GPU when there is one), ``cpu`` or ``cuda[:i]``.

    Raises:
        OptionError: If the name is no device, or a GPU is asked for and none is usable.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise OptionError(
            f"device {name!r} is not supported",
            "use auto, cpu or cuda[:i].",
            cli_fix="use --device auto, cpu or cuda[:i].",
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(
            f"device {name}: no CUDA GPU is available here",
            "use device='cpu'.",
            cli_fix="use --device cpu.",
        )
    return device


@dataclass
class Engine:
    """A Dask client ready to run chunk tasks.

    Attributes:
        client: The connected client.
        description: One line saying where tasks run, for the command's report.
        torch_threads: Intra-op threads the model plugin sets on each worker.
        device: Device setting passed to the workers.
    """

    client: Client
    description: str
    torch_threads: int | None
    device: str
    in_process: bool = False
    _installed: set[str] = field(default_factory=set)
    _undo: ExitStack = field(default_factory=ExitStack)

    def install(self, loaded: LoadedModel) -> str:
        """Get ``loaded`` to every worker once; returns the key tasks use.

        The key is the model's content identity and the kind of network that runs it
        (a PyTorch module or an ONNX Runtime session of the same weights), so a model is
        sent once however often it is loaded, and never mistaken for another. Workers
        inside this process share
        ``loaded`` itself; others get a copy through a worker plugin, which the
        scheduler also gives to workers that join later.

        Raises:
            ClusterError: If the workers cannot load the model.
        """
        key = f"{loaded.identity[:32]}-{type(loaded.model).__name__}"
        if key in self._installed:
            return key
        setup = WorkerSetup(key, loaded, self.device, self.torch_threads)
        if self.in_process:
            self._undo.enter_context(setup.apply(self.threads))
        else:
            self._register(ModelPlugin(setup))
        self._installed.add(key)
        return key

    def close(self) -> None:
        """Forget the models installed in this process and restore GDAL's settings."""
        self._undo.close()

    def _register(self, plugin: ModelPlugin) -> None:
        """Register the plugin, again while workers are lost during the broadcast.

        The scheduler keeps the plugin before it sends it out, so a broadcast cut short
        by a dying worker is simply repeated to the workers that remain.
        """
        for attempt in range(1, REGISTER_TRIES + 1):
            try:
                self.client.register_plugin(plugin)
                return
            except RsscgeoError:
                raise
            except OSError as err:  # a worker's connection closed: it was lost
                if attempt == REGISTER_TRIES:
                    raise ClusterError(
                        f"the model cannot be sent to the Dask workers ({first_line(err)}); "
                        "workers kept disconnecting: check their logs and memory."
                    ) from None
                time.sleep(REGISTER_PAUSE_SECONDS)
            except Exception as err:
                raise _import_failure(err, "the model") or ClusterError(
                    f"the model cannot be sent to the Dask workers ({first_line(err)}); "
                    "models must pickle (rsscgeo's own do), and the workers need rsscgeo "
                    "installed."
                ) from None

    @property
    def threads(self) -> int:
        """Task threads across all workers (at least 1)."""
        nthreads: dict[str, int] = self.client.nthreads()
        return max(1, sum(nthreads.values()))

    def run(
        self,
        work: Callable[[Chunk, LoadedModel], ChunkResult],
        key: str,
        chunks: list[Chunk],
        done: Callable[[Chunk], ChunkResult | None],
        on_result: Callable[[ChunkResult], None],
    ) -> Iterator[ChunkResult]:
        """Results of ``chunks`` in order; ``done`` supplies those already finished.

        ``on_result`` sees each newly computed result as soon as it arrives (to journal
        and count it); results are yielded in chunk order once their turn comes.

        Raises:
            RunInterrupted: If a stop is requested (``stopping.STOP``) while it waits;
                the tasks in flight are cancelled.
        """
        window = IN_FLIGHT_PER_THREAD * self.threads
        running = as_completed(loop=self.client.loop)
        # The futures in flight, kept here: as_completed's own set changes in the
        # client's event-loop thread, so iterating it to cancel would race.
        in_flight: dict[Chunk, Any] = {}
        ready: dict[Chunk, ChunkResult] = {}  # arrived, waiting for their turn
        submitted = 0
        try:
            for position, chunk in enumerate(chunks):
                # Keep up to ``window`` chunks ahead of the one to yield next.
                while submitted < len(chunks) and submitted < position + window:
                    ahead = chunks[submitted]
                    previous = done(ahead)
                    if previous is not None:
                        ready[ahead] = previous
                    else:
                        # The work itself, not a scattered copy: a few kB a task, and
                        # nothing is lost with a worker (a scatter to a worker dying at
                        # that moment failed the run).
                        future = self.client.submit(
                            _run_chunk,
                            work,
                            ahead,
                            key,
                            pure=False,
                            key=_task_key(ahead),
                            retries=TASK_RETRIES,
                        )
                        in_flight[ahead] = future
                        future.add_done_callback(_wake)
                        running.add(future)
                    submitted += 1
                while chunk not in ready:
                    # A bounded wait, not a blocking next(): a stop request wakes it.
                    while not STOP.wait(running.has_ready):
                        STOP.check()
                    future = next(running)
                    result = self._result(future)
                    del in_flight[result.chunk]
                    on_result(result)
                    ready[result.chunk] = result
                    future.release()
                yield ready.pop(chunk)
        finally:
            if in_flight:
                self.client.cancel(list(in_flight.values()), force=True)

    def _result(self, future: Any) -> ChunkResult:
        try:
            result: ChunkResult = future.result()
        except RsscgeoError:
            raise
        except Exception as err:
            failure = _import_failure(err, "a task")
            if failure is None:
                raise
            raise failure from None
        return result


@contextmanager
def open_engine(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    processes: bool = False,
    device: str = "auto",
    torch_threads: int | None = None,
) -> Iterator[Engine]:
    """Connect to ``scheduler`` (or ``DASK_SCHEDULER_ADDRESS``), or start a local cluster.

    ``torch_threads`` (intra-op threads per worker process) defaults to the cores
    divided among the task threads.

    Raises:
        ClusterError: If the scheduler cannot be reached.
    """
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    # The models go only after the cluster has closed, which waits for the tasks still
    # running in its threads: a stopped run's last tasks must not find them gone.
    with ExitStack() as models, ExitStack() as stack:
        if address:
            client = _connect(address)
            stack.callback(client.close)
            count = len(client.nthreads())
            engine = Engine(
                client,
                f"Dask cluster at {address}: {count} workers, "
                f"{sum(client.nthreads().values())} threads",
                torch_threads,
                device,
            )
        else:
            engine = _local_engine(stack, workers, processes, device)
            engine.torch_threads = torch_threads or engine.torch_threads
        models.callback(engine.close)
        yield engine


def _connect(address: str) -> Client:
    try:
        return Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        start = "start one with `dask scheduler` and workers with `dask worker ADDRESS`"
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} ({first_line(err)})",
            f"{start}, or fix the address.",
            cli_fix=f"{start}, or fix --scheduler.",
        ) from None


def _local_engine(stack: ExitStack, workers: int | None, processes: bool, device: str) -> Engine:
    cores = os.cpu_count() or 1
    target = resolve_device(device)  # a missing GPU fails here, before any worker starts
    # The scheduler serves HTTP even without a dashboard: any free port, never a clash.
    quiet = {"dashboard_address": ":0", "silence_logs": logging.ERROR}
    gpus = torch.cuda.device_count() if target.type == "cuda" and target.index is None else 0
    in_process = False
    if gpus > 1 and _has_dask_cuda():
        from dask_cuda import LocalCUDACluster

        cluster = stack.enter_context(LocalCUDACluster(**quiet))
        description = f"local Dask cluster: one worker per GPU ({gpus})"
        threads: int | None = None
    elif processes:
        count = workers or cores
        cluster = stack.enter_context(
            LocalCluster(n_workers=count, threads_per_worker=1, processes=True, **quiet)
        )
        description = f"local Dask cluster: {count} worker processes"
        threads = max(1, cores // count)
    else:
        count = workers or cores
        cluster = stack.enter_context(
            LocalCluster(n_workers=1, threads_per_worker=count, processes=False, **quiet)
        )
        description = f"local Dask cluster: {count} threads in this process"
        if gpus > 1:
            description += f" (one of {gpus} GPUs; install dask-cuda to use all)"
        threads = max(1, cores // count)
        in_process = True
    client = stack.enter_context(Client(cluster, set_as_default=False))
    return Engine(client, description, threads, str(target), in_process=in_process)


def _has_dask_cuda() -> bool:
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def _import_failure(err: BaseException, what: str) -> ClusterError | None:
    """The one-line error if ``err`` is a worker failing to import what ``what`` needs.

    Workers report import failures wrapped, as text, so the message decides.
    """
    if not (isinstance(err, ImportError) or "No module named" in str(err)):
        return None
    return ClusterError(
        f"the Dask workers cannot import what {what} needs ({first_line(err)}); install "
        "rsscgeo and its dependencies in the workers' environment."
    )


def _wake(_: Any) -> None:
    """A task finished: wake the client if it waits for results."""
    STOP.wake()


def _task_key(chunk: Chunk) -> str:
    return f"rsscgeo-chunk-{chunk.index}-{uuid.uuid4().hex[:8]}"
