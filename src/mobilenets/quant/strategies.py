"""How a mixed-precision file chooses its float layers: one small type per strategy.

Each strategy says whether it needs the layers ranked by sensitivity (and, for
:class:`TargetAgreement`, the simulated agreement of each count), checks its own arguments,
and picks among candidates that a :class:`~mobilenets.quant.candidates.Bench` writes, checks
and times. :func:`~mobilenets.quant.mixed.quantize_mixed` runs whichever it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mobilenets.errors import MobileNetError
from mobilenets.quant.candidates import Bench, Candidate

DEFAULT_MAX_LATENCY_COST = 0.15
DEFAULT_MAX_FLOAT = 8
Say = Callable[[str], object]


@dataclass
class Ranking:
    """The quantizable layers, most sensitive first, with each one's logit SQNR when it alone
    is int8, and the simulated top-1 agreement with the first k in float (k = 0, 1, ...)."""

    order: list[str]
    alone_sqnr_db: dict[str, float] = field(default_factory=dict)
    predicted: list[float] = field(default_factory=list)


@dataclass
class Pick:
    """The candidates tried (``paths[i]`` holds ``tried[i]``), the one chosen, and how."""

    tried: list[Candidate]
    paths: list[Path]
    chosen: int
    chosen_by: str
    # when the candidates were already timed together with the fp32 and all-int8 files:
    fp32_ms: float | None = None
    int8: Candidate | None = None


class Strategy:
    """A way to choose the float layers. Its arguments are checked when it is made (one line
    for a value that cannot work), the layer names once the model is known."""

    ranked = True  # needs the sensitivity ranking
    simulated = 0  # simulated agreement wanted for 0 .. this many float layers

    def check(self, names: Sequence[str]) -> None:
        """One line when the strategy names a layer the model does not quantize."""

    def pick(self, bench: Bench, ranking: Ranking, say: Say) -> Pick:
        raise NotImplementedError


def _one(bench: Bench, kept: Sequence[str], chosen_by: str) -> Pick:
    """One file with ``kept`` in float: checked now, timed with the others afterwards."""
    path = bench.write(kept)
    candidate = Candidate.of(kept, bench.check(path), math.nan, math.nan)
    return Pick([candidate], [path], 0, chosen_by)


@dataclass
class Named(Strategy):
    """These layers in float."""

    fp32_modules: Sequence[str]
    ranked = False

    def check(self, names: Sequence[str]) -> None:
        unknown = [n for n in self.fp32_modules if n not in names]
        if unknown:
            raise MobileNetError(f"no quantizable layer named {', '.join(unknown)}")

    def pick(self, bench: Bench, ranking: Ranking, say: Say) -> Pick:
        return _one(bench, list(self.fp32_modules), f"named: {len(self.fp32_modules)} layers")


@dataclass
class Keep(Strategy):
    """The ``count`` most sensitive layers in float."""

    count: int

    def __post_init__(self) -> None:
        if self.count < 0:
            raise MobileNetError(f"--keep must be >= 0, got {self.count}")

    def pick(self, bench: Bench, ranking: Ranking, say: Say) -> Pick:
        return _one(bench, ranking.order[: self.count], f"{self.count} most sensitive")


@dataclass
class BelowSqnr(Strategy):
    """Every layer whose logit SQNR with it alone int8 is under ``db`` in float (the
    sensitivity report's "alone" column): a prefix of the ranking."""

    db: float

    def pick(self, bench: Bench, ranking: Ranking, say: Say) -> Pick:
        count = sum(ranking.alone_sqnr_db[n] < self.db for n in ranking.order)
        chosen_by = f"{count} under {self.db:g} dB with only that layer int8"
        return _one(bench, ranking.order[:count], chosen_by)


@dataclass
class TargetAgreement(Strategy):
    """The fewest most sensitive layers in float whose file agrees with the float model on
    ``agreement`` of the images, within ``max_float`` layers and ``max_latency_cost``.

    The simulation predicts the count; the runtime measures from there up, since its int8
    (fused kernels, quantized additions) is not the simulation's."""

    agreement: float
    max_float: int = DEFAULT_MAX_FLOAT
    max_latency_cost: float = DEFAULT_MAX_LATENCY_COST

    @property
    def simulated(self) -> int:  # type: ignore[override]
        return self.max_float

    def __post_init__(self) -> None:
        if not 0 < self.agreement <= 1:
            raise MobileNetError(f"target agreement must be in (0, 1], got {self.agreement}")

    def pick(self, bench: Bench, ranking: Ranking, say: Say) -> Pick:
        predicted = ranking.predicted
        start = next((k for k, a in enumerate(predicted) if a >= self.agreement), self.max_float)
        tried: list[Candidate] = []
        paths: list[Path] = []
        for k in range(start, self.max_float + 1):
            candidate, path, _ = bench.candidate(ranking.order[:k])
            tried.append(candidate)
            paths.append(path)
            say(candidate.describe())
            if candidate.latency_cost > self.max_latency_cost:
                break
            if candidate.top1_agreement >= self.agreement:
                chosen_by = f"fewest most sensitive reaching {self.agreement:.1%}"
                return Pick(tried, paths, len(tried) - 1, chosen_by)
        reached = max(tried, key=lambda c: c.top1_agreement)
        raise MobileNetError(
            f"no mixed-precision setting reaches {self.agreement:.1%} agreement within "
            f"{self.max_float} float layers and {self.max_latency_cost:.0%} latency; the best "
            f"reached {reached.top1_agreement:.1%} with {len(reached.fp32_modules)} layers in "
            f"float ({reached.latency_cost:+.0%} latency)"
        )


@dataclass
class Frontier(Strategy):
    """Each count of most sensitive layers in float measured (the trade-off curve itself);
    the most agreeing within ``max_latency_cost`` is written."""

    counts: Sequence[int]
    max_latency_cost: float = DEFAULT_MAX_LATENCY_COST

    def __post_init__(self) -> None:
        if not self.counts or min(self.counts) < 0:
            raise MobileNetError(f"--frontier needs counts >= 0, got {list(self.counts)}")

    def pick(self, bench: Bench, ranking: Ranking, say: Say) -> Pick:
        order = ranking.order
        tried: list[Candidate] = []
        paths: list[Path] = []
        for k in sorted({min(k, len(order)) for k in self.counts}):  # 99 of 53: all 53
            path = bench.write(order[:k])
            check = bench.check(path)
            tried.append(Candidate.of(order[:k], check, math.nan, math.nan))
            paths.append(path)
            say(
                f"{k} layers in float: agreement {check.top1_agreement:.1%}, "
                f"SQNR {check.sqnr_db:.1f} dB"
            )
        say(f"timing the {len(paths)} files against fp32 and all-int8, interleaved")
        fp32_ms, int8, tried = bench.retimed(tried, paths)
        within = [i for i, c in enumerate(tried) if c.latency_cost <= self.max_latency_cost]
        if not within:
            cheapest = min(tried, key=lambda c: c.latency_cost)
            raise MobileNetError(
                f"no count of float layers keeps the latency within "
                f"{self.max_latency_cost:.0%} of all-int8; the cheapest, "
                f"{len(cheapest.fp32_modules)}, costs {cheapest.latency_cost:+.0%}"
            )
        chosen = max(within, key=lambda i: (tried[i].top1_agreement, tried[i].sqnr_db))
        chosen_by = (
            f"most agreeing of {len(tried)} counts within {self.max_latency_cost:.0%} latency"
        )
        return Pick(tried, paths, chosen, chosen_by, fp32_ms, int8)
