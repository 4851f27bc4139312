"""Timing graphs in onnxruntime's profiler: kernel times of one-layer graphs, interleaved passes
over the samples, the runtime's per-call and per-kernel overheads, the weight cache and how
streaming weights overlaps compute.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from mobilenets.analysis.cost import LayerCost
from mobilenets.deploy.runtime import DEFAULT_PROVIDER, create_session
from mobilenets.latency.graphs import (
    chain_graph,
    cold_copies,
    context_graph,
    copies_past_cache,
    layer_graph,
    one_layer,
    side_by_side,
)
from mobilenets.latency.model import (
    FUSED_KINDS,
    IN_CONTEXT_KINDS,
    pointwise_kind,
)
from mobilenets.latency.samples import CHAIN_LENGTH, Sample

OVERHEAD_REPEATS = 9  # splits of the runtime overhead, the median kept
OVERHEAD_EVERY = 10  # a calibration makes one split after every this many samples
CONTEXT_REPEATS = 3  # interleaved sessions of each in-place sample's two graphs per pass
# passes over all the samples: every sample keeps its fastest pass (one pass let a slow spell
# set a kind's rates: a 2-thread calibration fitted small-K pointwise layers at 21 GB/s against
# 27-28 in others, and priced the separable VGG 0.35 at 224 px 41% slow)
CALIBRATION_ROUNDS = 2
# and more, up to this many, while the last pass sped up over SETTLED_SHARE of the samples by
# over SETTLED_SPEEDUP: a slow spell of the machine can outlast two passes (one fitted the
# memory rates of small-K pointwise layers, SE gates and SiLU at 19-22 GB/s against 28-56 in
# the run before, and priced the separable VGG 0.35 at 224 px 48% slow with 2 threads)
MAX_CALIBRATION_ROUNDS = 4
SETTLED_SHARE = 0.1
SETTLED_SPEEDUP = 0.1

# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Profile:
    """One graph's fastest wall time per call and fastest kernel time per node, in seconds,
    nodes in execution order as ``(name, op type, seconds)``, and each profiled run's kernel
    time, layout conversions left out (``runs``) and counted (``runs_all``)."""

    wall_s: float
    nodes: list[tuple[str, str, float]]
    runs: tuple[float, ...] = ()
    runs_all: tuple[float, ...] = ()

    def kernel_s(self, skip_reorders: bool = True) -> float:
        return sum(s for _, op, s in self.nodes if not (skip_reorders and op.startswith("Reorder")))

    def fastest_run_s(self, skip_reorders: bool = True) -> float:
        """The kernel time of the fastest run. Where the nodes' times vary from run to run
        (weights streamed from memory) this is what a fastest call sees, and the sum of the
        nodes' fastest times is below it: each node's luckiest run is a different one."""
        runs = self.runs if skip_reorders else self.runs_all
        return min(runs) if runs else self.kernel_s(skip_reorders)


def profile_onnx(
    path: str | os.PathLike[str],
    provider: str = DEFAULT_PROVIDER,
    threads: int = 0,
    budget_s: float = 0.1,
    min_runs: int = 5,
    max_runs: int = 60,
    warmup: int = 3,
    wall: bool = True,
) -> Profile:
    """Run an ONNX file under the profiler for the kernel time of each node and, with
    ``wall``, in a plain session for the wall time per call (the profiler's own bookkeeping
    would inflate it); keep the fastest of each."""
    feed = _random_feed(path)
    walls, runs = [math.nan], min_runs
    with tempfile.TemporaryDirectory() as tmp:
        profiled = create_session(path, threads or None, provider, profile_prefix=f"{tmp}/p")
        for _ in range(warmup):
            profiled.run(None, feed)
        start = time.perf_counter()
        profiled.run(None, feed)
        one = max(time.perf_counter() - start, 1e-6)
        runs = int(min(max_runs, max(min_runs, budget_s / (2 if wall else 1) / one)))
        for _ in range(runs):
            profiled.run(None, feed)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    if wall:
        plain = create_session(path, threads or None, provider)
        for _ in range(warmup):
            plain.run(None, feed)
        walls = []
        for _ in range(runs):
            start = time.perf_counter()
            plain.run(None, feed)
            walls.append(time.perf_counter() - start)
    times, ops = _node_times(events)
    return Profile(
        min(walls),
        _fastest_nodes(times, ops, skip_runs=warmup + 1),
        _run_kernel_s(times, ops, skip_runs=warmup + 1),
        _run_kernel_s(times, ops, skip_runs=warmup + 1, skip_reorders=False),
    )


def _random_feed(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A batch of one for the graph's input (a free batch axis taken as 1)."""
    graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    return {graph_input.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def _node_times(events: list[dict]) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Each node's kernel time in every run (in run order) and its op type; the dicts keep
    the order of the first run."""
    times: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        name = event["name"].removesuffix("_kernel_time")
        times.setdefault(name, []).append(event["dur"] * 1e-6)
        ops[name] = event.get("args", {}).get("op_name", "")
    return times, ops


def _fastest_nodes(
    times: dict[str, list[float]], ops: dict[str, str], skip_runs: int
) -> list[tuple[str, str, float]]:
    """Each node's fastest kernel time over the profiled runs after ``skip_runs``."""
    return [(name, ops[name], min(ts[skip_runs:] or ts)) for name, ts in times.items()]


def _run_kernel_s(
    times: dict[str, list[float]],
    ops: dict[str, str],
    skip_runs: int,
    skip_reorders: bool = True,
) -> tuple[float, ...]:
    """Each profiled run's kernel time after ``skip_runs``, layout conversions left out unless
    ``skip_reorders`` is false (every node runs once per call, so a node's i-th time belongs to
    run i)."""
    kept = [
        ts for name, ts in times.items() if not (skip_reorders and ops[name].startswith("Reorder"))
    ]
    if not kept:
        return ()
    runs = min(len(ts) for ts in kept)
    start = skip_runs if runs > skip_runs else 0
    return tuple(sum(ts[i] for ts in kept) for i in range(start, runs))


def measure_samples(
    samples: Sequence[Sample],
    provider: str = DEFAULT_PROVIDER,
    threads: int = 0,
    budget_s: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
    rounds: int = CALIBRATION_ROUNDS,
    max_rounds: int = MAX_CALIBRATION_ROUNDS,
    between: Callable[[], None] | None = None,
) -> tuple[list[Sample], int]:
    """Time each sample's one-layer graph; its time is the kernel time of its own nodes.

    Every sample is timed once in each pass over all of them, in :func:`interleaved` order, as
    the benchmarks time whole models: a slow spell then slows one timing of a layer, not all.
    A one-layer graph keeps its fastest time. An in-place gate or SiLU is the difference of its
    two graphs' fastest times, with and without it. A pass fused into a convolution (ReLU6,
    HardSwish) changes that kernel's time by less than the fastest times scatter (from them,
    ReLU6 came out free and MobileNetV2 up to 13% fast with 2 threads), so it is the median of
    its pairs' differences over all passes, with their scatter.

    After ``rounds`` passes, more are made, up to ``max_rounds``, while a pass still sped up
    more than :data:`SETTLED_SHARE` of the samples by more than :data:`SETTLED_SPEEDUP`: the
    machine was slow for part of the passes before, and the fastest times have not settled.
    ``between`` is called after every :data:`OVERHEAD_EVERY` samples, to spread another
    measurement over the passes. Returns the samples in the order given and the number of
    passes made.
    """
    best: dict[int, list[float]] = {}
    nodes: dict[int, list[int]] = {}
    added: dict[int, list[float]] = {}
    done, turn, planned = 0, 0, rounds
    with tempfile.TemporaryDirectory() as tmp:
        while turn < planned:
            sped_up = 0
            for i in interleaved(samples, _pass_start(turn)):
                sample = samples[i]
                path = Path(tmp) / f"layer{i}.onnx"
                if sample.kind in IN_CONTEXT_KINDS:
                    times, diffs, counts = _in_context_pairs(
                        sample, path, provider, threads, budget_s, seed=i
                    )
                    added.setdefault(i, []).extend(diffs)
                    nodes.setdefault(i, []).extend(counts)
                else:
                    if not path.exists():
                        onnx.save(layer_graph(sample, seed=i), str(path))
                    profile = profile_onnx(path, provider, threads, budget_s, wall=False)
                    times = (profile.fastest_run_s() / cold_copies(sample),)
                old = best.get(i, [math.inf] * len(times))
                sped_up += turn > 0 and any(
                    t < (1 - SETTLED_SPEEDUP) * o for t, o in zip(times, old, strict=True)
                )
                best[i] = [min(t, o) for t, o in zip(times, old, strict=True)]
                done += 1
                if between is not None and done % OVERHEAD_EVERY == 0:
                    between()
                if progress is not None:
                    progress(done, planned * len(samples))
            turn += 1
            if turn == planned and turn < max_rounds and sped_up > SETTLED_SHARE * len(samples):
                planned += 1

    def measured(i: int, sample: Sample) -> Sample:
        if sample.kind not in IN_CONTEXT_KINDS:  # a one-layer graph
            return replace(sample, seconds=best[i][0], nodes=1)
        runtime_nodes = max(0, round(float(np.median(nodes[i]))))
        if sample.kind in FUSED_KINDS:
            seconds, scatter = float(np.median(added[i])), standard_error(added[i])
            return replace(sample, seconds=seconds, nodes=runtime_nodes, scatter_s=scatter)
        return replace(sample, seconds=best[i][0] - best[i][1], nodes=runtime_nodes)

    return [measured(i, sample) for i, sample in enumerate(samples)], turn


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the median of ``values``, from their median absolute deviation
    (a slow spell's outlier does not widen it)."""
    deviation = float(np.median(np.abs(np.asarray(values) - np.median(values))))
    return 1.4826 * deviation * math.sqrt(math.pi / 2 / max(len(values), 1))


def _pass_start(turn: int) -> float:
    """Where pass ``turn`` begins each kind's queue: 0, 1/2, 1/4, 3/4, 1/8, ... (each pass
    halfway between earlier ones)."""
    start, weight = 0.0, 0.5
    while turn:
        start += weight * (turn & 1)
        turn >>= 1
        weight /= 2
    return start


def interleaved(samples: Sequence[Sample], start: float = 0.0) -> list[int]:
    """The indices of ``samples`` taking one of each kind in turn (round robin), each kind's
    in the order given but begun ``start`` (a fraction) of the way along and wrapped round.

    A slow spell of a shared machine then falls on a few samples of many kinds, which the
    soft-L1 fit discounts, rather than on every sample of one kind: timed kind by kind, one
    spell over the SE samples fitted the gate at 7.7 GB/s against 21 in the run before, and
    priced EfficientNet-B0 at 224 px 47% slow with 2 threads. Each pass begins elsewhere, so
    that the largest samples of every kind, which set the fitted rates, are not timed at the
    same moment of every pass: a spell at the end of the second of two passes once slowed the
    largest gate 6x and the largest SiLU 40x, and the gate was fitted at 21.6 GB/s (28-30
    when no spell fell on it).
    """
    by_kind: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        by_kind.setdefault(sample.kind, []).append(i)
    queues = []
    for queue in by_kind.values():
        first = int(start * len(queue)) % len(queue)
        queues.append(queue[first:] + queue[:first])
    order = []
    for turn in range(max((len(q) for q in queues), default=0)):
        order += [q[turn] for q in queues if turn < len(q)]
    return order


def _in_context_pairs(
    sample: Sample, path: Path, provider: str, threads: int, budget_s: float, seed: int
) -> tuple[tuple[float, float], list[float], list[int]]:
    """The layer timed in its context against the context alone, in :data:`CONTEXT_REPEATS`
    interleaved pairs of sessions: the fastest kernel time of each graph, layout conversions
    included; what the layer adds to the kernels in each pair; and how many nodes it adds to
    the runtime's graph (a squeeze-and-excitation gate: its pooling, its scale and the
    conversions out of and back into the blocked layout).

    Each graph's fastest time lets a slow spell through neither way: a spell only slows, so
    the fastest of the other sessions stands. The median of the pairs' differences over two
    passes let one through when it covered a whole pass (the largest gate timed 1.1-1.9 ms
    against 0.2 and fitted at 21.6 GB/s), and that of one pass did when it covered a few
    pairs (SiLU fitted at 5.9 GB/s, EfficientNet-B0 at 224 px priced 123% slow). A
    difference can come out at or below zero for a pass too small to see against the noise.
    """
    paths = [path.with_name(f"{path.stem}_{i}.onnx") for i in range(2)]
    for with_layer, graph_path in zip((True, False), paths, strict=True):
        if not graph_path.exists():
            onnx.save(context_graph(sample, with_layer, seed), str(graph_path))
    best, added, nodes = [math.inf, math.inf], [], []
    for _ in range(CONTEXT_REPEATS):
        profiles = [profile_onnx(p, provider, threads, budget_s, wall=False) for p in paths]
        for j, profile in enumerate(profiles):
            best[j] = min(best[j], profile.fastest_run_s(skip_reorders=False))
        added.append(profiles[0].kernel_s(False) - profiles[1].kernel_s(False))
        nodes.append(len(profiles[0].nodes) - len(profiles[1].nodes))
    return (best[0], best[1]), added, nodes


def measure_overheads(
    provider: str = DEFAULT_PROVIDER,
    threads: int = 0,
    length: int = CHAIN_LENGTH,
    channels: int = 8,
    size: int = 8,
    repeats: int = OVERHEAD_REPEATS,
) -> tuple[float, float]:
    """The runtime's seconds between kernels and per call, from chains of 1 and ``length``
    tiny layers (``channels`` x ``size`` x ``size``): what the wall time adds to the kernel
    times, split into a per-node and a fixed part; the median of ``repeats`` splits made one
    after another (a calibration spreads its splits over its passes instead)."""
    with overhead_chains(length, channels, size) as chains:
        return median_split([overhead_split(chains, provider, threads) for _ in range(repeats)])


@contextlib.contextmanager
def overhead_chains(
    length: int = CHAIN_LENGTH, channels: int = 8, size: int = 8
) -> Iterator[dict[int, Path]]:
    """Chains of 1 and ``length`` tiny layers written to a temporary folder, by length."""
    with tempfile.TemporaryDirectory() as tmp:
        chains = {}
        for n in (1, length):
            chains[n] = Path(tmp) / f"chain{n}.onnx"
            onnx.save(chain_graph(n, channels, size), str(chains[n]))
        yield chains


def overhead_split(
    chains: dict[int, Path], provider: str = DEFAULT_PROVIDER, threads: int = 0
) -> tuple[float, float]:
    """One split of the runtime overhead, per node and per call, from the shortest and the
    longest of ``chains`` (:func:`overhead_chains`).

    One split takes a fraction of a second, and with 2 threads one came out anywhere from -3.0
    to -4.9 us per node; a network of 118 runtime nodes (MobileNetV3-Small 0.35 at 96 px) turns
    that spread into a quarter of its latency."""
    extra, nodes = {}, {}
    for n, path in chains.items():
        profile = profile_onnx(path, provider, threads, budget_s=0.2, min_runs=20)
        extra[n] = profile.wall_s - profile.kernel_s(skip_reorders=False)
        nodes[n] = len(profile.nodes)
    short, long = min(chains), max(chains)
    per_node = (extra[long] - extra[short]) / max(nodes[long] - nodes[short], 1)
    return per_node, max(0.0, extra[short] - per_node * nodes[short])


def median_split(splits: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The median per-node and per-call overheads of ``splits``."""
    return float(np.median([s[0] for s in splits])), float(np.median([s[1] for s in splits]))


WEIGHT_CACHE_COPIES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)  # 4 MiB layers side by side
# passes over those copies, each point's median kept: one pass put the cache anywhere from 10
# to 18 MiB between calibrations on the same machine
CACHE_PASSES = 3
CACHE_GRID = np.geomspace(2**19, 2**29, 61)  # candidate cache sizes, 0.5 MiB to 512 MiB


def measure_weight_cache(
    provider: str = DEFAULT_PROVIDER, threads: int = 0, budget_s: float = 0.1
) -> tuple[float, float, float]:
    """How many bytes one call may pass through the cache and still find all its weights
    there on the next, from how many it finds none, and the rate at which weights that it
    does not keep stream from memory (bytes per second).

    A 1024 x 1024 fully connected layer (4 MiB of weights) runs as 1 to 32 copies side by side,
    each with its own weights: while all copies fit in cache every call finds its weights
    there; past that, the time per copy climbs to the memory-bound rate. The time per copy is
    fitted as ``warm * f + cold * (1 - f)`` with ``f`` falling linearly from 1 at ``lo`` bytes
    to 0 at ``hi`` (:meth:`~mobilenets.latency.model.Calibration.warm_fraction`), ``lo`` and ``hi``
    searched over a grid, ``warm`` and ``cold`` by least squares for each pair; 4 MiB over
    ``cold`` is the streaming rate. Each graph's time is its fastest call's
    (:meth:`Profile.fastest_run_s`), the median over :data:`CACHE_PASSES` passes of about
    ``budget_s`` seconds each.
    """
    n = 1024
    row = LayerCost("fc", "linear", (1, n), (1, n), n * n, n * n + n, n)
    weights = np.array([copies * row.params * 4 for copies in WEIGHT_CACHE_COPIES], dtype=float)
    per_copy = np.zeros((CACHE_PASSES, len(WEIGHT_CACHE_COPIES)))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for copies in WEIGHT_CACHE_COPIES:
            paths.append(Path(tmp) / f"fc{copies}.onnx")
            layers = [one_layer(Sample(row, "fc"), seed) for seed in range(copies)]
            onnx.save(side_by_side(layers) if copies > 1 else layers[0], str(paths[-1]))
        for i in range(CACHE_PASSES):
            for j, (copies, path) in enumerate(zip(WEIGHT_CACHE_COPIES, paths, strict=True)):
                profile = profile_onnx(path, provider, threads, budget_s=budget_s, wall=False)
                per_copy[i, j] = profile.fastest_run_s() / copies
    lo, hi, _, cold = fit_weight_cache(weights, np.median(per_copy, axis=0))
    return lo, hi, row.params * 4 / cold


# Pointwise layers (in, out, map size) whose weights, 0.4 to 3.5 MiB, are timed warm and cold:
# the shapes of the late layers of large networks at low resolution, which stream the most
OVERLAP_LAYERS = ((192, 576, 6), (256, 512, 6), (576, 576, 3), (384, 1152, 3), (960, 960, 3))
OVERLAP_GRID = np.geomspace(1.0, 32.0, 41)  # candidate exponents; 32 is max() in all but name


def measure_stream_overlap(
    stream_bytes_per_s: float,
    provider: str = DEFAULT_PROVIDER,
    threads: int = 0,
    budget_s: float = 0.1,
) -> float:
    """How far a convolution overlaps streaming its weights from memory with its work.

    Each layer of :data:`OVERLAP_LAYERS` runs alone (its weights warm) and as copies side by
    side with their own weights, past twice the last-level cache (cold). The cold time is
    fitted as ``(warm**p + stream**p) ** (1 / p)`` with ``stream`` its weight bytes at the
    streaming rate: p = 1 is no overlap (the times add), a large p full overlap (the larger
    wins). Each time is a fastest call's, as a whole network's latency is: the sum of each
    copy's fastest time (each from a different call) read full overlap where the fastest
    call's read p = 2.8. One-layer graphs of EfficientNet-B3's late layers fell in between
    (1.29 MB: warm 57 us, stream 80 us, cold 108 us). Each graph is timed for about
    ``budget_s`` seconds.
    """
    warm, stream, cold = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for c_in, c_out, size in OVERLAP_LAYERS:
            row = LayerCost(
                "pw",
                "pointwise",
                (1, c_in, size, size),
                (1, c_out, size, size),
                c_in * c_out * size * size,
                c_in * c_out + c_out,
                c_out * size * size,
            )
            sample = Sample(row, pointwise_kind(c_in))
            weight_bytes = row.params * 4
            copies = copies_past_cache(weight_bytes, at_least=2)
            times = []
            for n in (1, copies):
                path = Path(tmp) / f"overlap{n}.onnx"
                layers = [one_layer(sample, seed) for seed in range(n)]
                onnx.save(side_by_side(layers) if n > 1 else layers[0], str(path))
                profile = profile_onnx(path, provider, threads, budget_s=budget_s, wall=False)
                times.append(profile.fastest_run_s() / n)
            warm.append(times[0])
            cold.append(times[1])
            stream.append(weight_bytes / stream_bytes_per_s)
    return fit_stream_overlap(np.array(warm), np.array(stream), np.array(cold))


def fit_stream_overlap(warm: np.ndarray, stream: np.ndarray, cold: np.ndarray) -> float:
    """The exponent p of :func:`measure_stream_overlap` that best explains ``cold``; 0 (the
    max, full overlap) when the grid's largest does, so that full overlap prices exactly as
    ``max`` rather than a hair above it."""
    errors = [
        float(np.sum(np.log((warm**p + stream**p) ** (1 / p) / cold) ** 2)) for p in OVERLAP_GRID
    ]
    best = int(np.argmin(errors))
    return 0.0 if best == len(OVERLAP_GRID) - 1 else float(OVERLAP_GRID[best])


def fit_weight_cache(weights: np.ndarray, seconds: np.ndarray) -> tuple[float, float, float, float]:
    """The bytes up to which ``seconds`` per copy (at ``weights`` bytes in all) are warm and
    from which they are cold, with the fitted warm and cold seconds per copy."""
    best = (float(CACHE_GRID[0]), float(CACHE_GRID[0]), float(seconds.min()), float(seconds.max()))
    best_error = math.inf
    for i, lo in enumerate(CACHE_GRID):
        for hi in CACHE_GRID[i + 1 :]:
            warm_share = np.clip((hi - weights) / (hi - lo), 0.0, 1.0)
            design = np.stack([warm_share, 1 - warm_share], axis=1)
            (warm, cold), *_ = np.linalg.lstsq(design, seconds, rcond=None)
            if warm <= 0 or cold <= 0:
                continue
            error = float(np.sum(np.log(design @ np.array([warm, cold]) / seconds) ** 2))
            if error < best_error:
                best, best_error = (float(lo), float(hi), float(warm), float(cold)), error
    return best
