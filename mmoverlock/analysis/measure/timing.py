"""Timing callables side by side: interleaved rounds (A B C A B C ...), so that a change of load on a shared machine
hits every candidate alike and the ratios between them stay meaningful."""
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Union

import torch

Device = Union[str, torch.device, None]


def set_threads(threads: Optional[int]) -> int:
    """Set torch's intra-op thread count (``None`` keeps it) and return the count in use.

    Raises:
        ValueError: If ``threads`` is not a positive integer.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f'threads must be a positive integer or None, got {threads!r}')
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def switch_mode(model: torch.nn.Module, training: bool) -> None:
    """Put ``model`` in training or eval mode where it is not in it yet, for the call a benchmark times next.

    A training or test loop switches once per phase, not per step, and ``Module.train`` walks every submodule (1467 in
    OverLoCK-T, 237 in ConvNeXt-T): switching inside every timed call would charge each model for its module count.
    """
    if model.training != training:
        model.train(training)


def synchronize(device: Device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a wall-clock interval covers it."""
    if device is not None and torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """The timed calls of one candidate, in seconds: wall clock, and the CPU time of the process (all threads)."""
    wall_s: List[float] = field(default_factory=list)
    cpu_s: List[float] = field(default_factory=list)
    warmup_s: Optional[float] = None  #: wall time of the last warm-up call

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def min_s(self) -> float:
        return min(self.wall_s)

    @property
    def spread(self) -> float:
        """(max - min) / median of the wall times: how much the rounds disagreed."""
        return (max(self.wall_s) - min(self.wall_s)) / self.median_s if self.median_s > 0 else 0.0

    @property
    def cpu_median_s(self) -> float:
        return statistics.median(self.cpu_s)

    def summary(self) -> dict:
        """The figures the tools write: median, min, max, mean, spread, CPU-time median and the round count."""
        return dict(median_s=self.median_s, min_s=self.min_s, max_s=max(self.wall_s),
                    mean_s=statistics.fmean(self.wall_s), spread=self.spread, cpu_median_s=self.cpu_median_s,
                    rounds=len(self.wall_s))


def time_call(fn: Callable[[], object], device: Device = None) -> Timing:
    """One call of ``fn``, timed (device synchronised before and after; freeing its result is not timed)."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    timing = Timing([time.perf_counter() - start], [time.process_time() - start_cpu])
    del result
    return timing


def rounds_within(budget_s: float, call_s: float, max_rounds: int) -> int:
    """How many calls of ``call_s`` seconds fit in ``budget_s``, clamped to ``1..max_rounds``."""
    return max(1, min(max_rounds, int(budget_s / max(call_s, 1e-9))))


def interleaved_times(candidates: Mapping[str, Callable[[], object]], rounds: Union[int, Mapping[str, int]] = 3,
                      warmup: int = 1, device: Device = None, budget_s: Optional[float] = None) -> Dict[str, Timing]:
    """Time the candidates in turns: ``warmup`` untimed calls of each, then rounds of one call of each.

    Args:
        candidates (Mapping[str, Callable]): Name to a zero-argument callable; called in this order every round.
        rounds (int | Mapping[str, int]): Timed calls per candidate (one count for all, or one per name). A
            candidate with fewer rounds sits out the later ones. Defaults to ``3``.
        warmup (int): Untimed calls per candidate first (lazy initialisation, caches). Defaults to ``1``.
        device (str | torch.device, optional): Synchronised around every call when it is a GPU.
        budget_s (float, optional): If given, a candidate gets only as many rounds (at least one, at most its
            ``rounds``) as fit in ``budget_s`` at its warm-up speed; needs ``warmup >= 1``. Defaults to ``None``.

    Returns:
        dict[str, Timing]: Per candidate, in the order given.

    Raises:
        ValueError: For no candidates, a candidate that is not callable, counts below their minimum, or a budget
            without a warm-up.
    """
    if not candidates:
        raise ValueError('interleaved_times: candidates is empty; expected a mapping of name to callable')
    for name, fn in candidates.items():
        if not callable(fn):
            raise ValueError(f'interleaved_times: candidates[{name!r}] is {type(fn).__name__}, expected a callable')
    counts = dict(rounds) if isinstance(rounds, Mapping) else {name: rounds for name in candidates}
    if set(counts) != set(candidates) or any(not isinstance(n, int) or n < 1 for n in counts.values()):
        raise ValueError(f'interleaved_times: rounds must be a positive int or one per candidate, got {rounds!r}')
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f'interleaved_times: warmup must be an int >= 0, got {warmup!r}')
    if budget_s is not None and (warmup < 1 or budget_s < 0):
        raise ValueError(f'interleaved_times: budget_s={budget_s!r} needs budget_s >= 0 and warmup >= 1')

    timings = {name: Timing() for name in candidates}
    for _ in range(warmup):
        for name, fn in candidates.items():
            timings[name].warmup_s = time_call(fn, device).wall_s[0]
    if budget_s is not None:
        counts = {name: rounds_within(budget_s, timings[name].warmup_s, counts[name]) for name in candidates}
    for index in range(max(counts.values())):
        for name, fn in candidates.items():
            if index < counts[name]:
                one = time_call(fn, device)
                timings[name].wall_s += one.wall_s
                timings[name].cpu_s += one.cpu_s
    return timings
