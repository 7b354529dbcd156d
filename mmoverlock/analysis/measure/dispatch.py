"""How many operators a call dispatches: the count of kernels it launches on a GPU, where each costs a few
microseconds of host time whatever its size, so a model of many small operators is bound by the host, not the GPU.

The count is taken on any device (the CPU included) under a ``TorchDispatchMode``, which sees every ATen and custom
operator after autograd, backward ones included; view operators count too (they launch no kernel, so the count is
an upper bound on the launches). It barely depends on the input size, so a small image measures it.
"""
from collections import Counter
from typing import Callable, Dict

from torch.utils._python_dispatch import TorchDispatchMode

#: The definition every table states with the counts.
DISPATCHED_OPS_DEFINITION = ('operators dispatched below autograd in one call (TorchDispatchMode; views included), '
                             'about the kernels it launches on a GPU')


class _OperatorCounter(TorchDispatchMode):

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def dispatched_ops(fn: Callable[[], object]) -> Dict[str, object]:
    """Run ``fn`` once, counting the operators it dispatches.

    Returns:
        dict: ``total`` and ``by_operator`` (name -> count, most frequent first).
    """
    counter = _OperatorCounter()
    with counter:
        fn()
    return dict(total=sum(counter.counts.values()), by_operator=dict(counter.counts.most_common()))
