"""Where a training step's memory goes: the bytes autograd saves for the backward, by module, and the memory the
backward itself needs on top of them.

:func:`saved_activations` runs one forward with ``torch.autograd.graph.saved_tensors_hooks`` installed and module
forward pre/post hooks that keep the stack of modules being run: each tensor autograd saves (built-in ops and custom
``autograd.Function``s alike) is charged to the innermost module running when it is saved, once per storage (a
view of a map another op already saved costs nothing more). Parameters, buffers and the tensors given as
``inputs`` were alive before the step and are not counted. Then it runs the backward and reads the process's memory
(the measuring module's one definition, see :mod:`.memory`): the growth over the forward, what the forward leaves
alive for the backward, and the peak during the backward; the difference of the last two is the backward's
transient (gradient maps, recomputed maps, the parameters' gradients).
"""
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from .memory import load_factory, reset_peak_rss, return_freed_memory_to_os, run_in_fresh_process, status_kib
from .report import markdown_table, report_header, write_json, write_markdown

#: What the forward/backward figures of :func:`saved_activations` mean, for the reports.
SAVED_ACTIVATIONS_DEFINITION = (
    'saved = bytes of the distinct storages autograd keeps for the backward (parameters and inputs excluded), charged '
    'to the innermost module running when each is saved; forward peak / kept = peak growth during the forward / '
    'growth still in use when it returns; backward peak = peak growth during the backward, both above the memory in '
    'use before the step (VmHWM / VmRSS, freed memory returned to the OS); transient = backward peak - kept')


def _storage_key(tensor: torch.Tensor) -> Tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage().data_ptr()


class _SavedTensorRecorder:
    """Module stack (forward pre/post hooks) + ``saved_tensors_hooks`` that charge each new storage to a module."""

    def __init__(self, model: nn.Module, exclude: Iterable[torch.Tensor]):
        self.model = model
        self.stack: List[nn.Module] = []
        self.names = {module: name for name, module in model.named_modules()}
        self.seen = {_storage_key(t) for t in exclude if t.device.type != 'meta'}
        self.entries: List[dict] = []
        self.handles = []

    def _enter(self, module, args):
        self.stack.append(module)

    def _leave(self, module, args, output):
        self.stack.pop()

    def _pack(self, tensor: torch.Tensor):
        if tensor.layout == torch.strided and tensor.device.type != 'meta':
            key = _storage_key(tensor)
            if key not in self.seen:
                self.seen.add(key)
                module = self.stack[-1] if self.stack else None
                self.entries.append(dict(module=self.names[module] if module is not None else None,
                                         type=type(module).__name__ if module is not None else None,
                                         shape=list(tensor.shape), dtype=str(tensor.dtype).replace('torch.', ''),
                                         bytes=tensor.untyped_storage().nbytes()))
        return tensor

    def __enter__(self):
        for module in self.model.modules():
            self.handles.append(module.register_forward_pre_hook(self._enter))
            self.handles.append(module.register_forward_hook(self._leave, always_call=True))
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def group_saved(entries: List[dict], key: Callable[[dict], str]) -> Dict[str, dict]:
    """Sum entries' bytes (and count them) by ``key(entry)``, largest first."""
    groups: Dict[str, dict] = defaultdict(lambda: dict(bytes=0, tensors=0))
    for entry in entries:
        group = groups[key(entry)]
        group['bytes'] += entry['bytes']
        group['tensors'] += 1
    return dict(sorted(groups.items(), key=lambda item: -item[1]['bytes']))


def module_prefix(path: str, depth: int) -> str:
    """The first ``depth`` dotted components of a module path (``'blocks1.0.proj.3'``, 2 -> ``'blocks1.0'``)."""
    return '.'.join(path.split('.')[:depth])


def saved_activations(model: nn.Module, forward: Callable[[], torch.Tensor],
                      inputs: Iterable[torch.Tensor] = (), group_depth: int = 2,
                      measure_rss: Optional[bool] = None) -> dict:
    """One training step of ``model`` (``forward().backward()``): saved tensors by module and the memory figures.

    Args:
        model (nn.Module): The model ``forward`` runs (its modules are hooked, its parameters and buffers excluded).
        forward (Callable[[], Tensor]): Runs the forward and returns the scalar loss; called once here.
        inputs (Iterable[Tensor]): Other tensors alive before the step (the images), not counted as saved.
        group_depth (int): Components of the module path that ``by_block`` groups by. Defaults to 2.
        measure_rss (bool, optional): Read the process's memory around the forward and the backward (CPU, Linux);
            ``None``: when the parameters are on the CPU. Needs no other thread allocating meanwhile.

    Returns:
        dict: ``saved_mib`` (total); ``by_block`` (module path cut to ``group_depth`` components), ``by_role`` (the
        block's type, the path inside it and the module's type: ``'RepConvBlock.proj.7 (GRN)'`` sums that layer
        over every RepConvBlock) and ``by_module`` (full path), each ``{name: {bytes, tensors}}``; ``entries``
        (every saved storage: module, type, block, role, shape, dtype, bytes); and, with ``measure_rss``,
        ``forward_peak_mib``, ``kept_mib``, ``backward_peak_mib``, ``backward_transient_mib``.
    """
    if isinstance(group_depth, bool) or not isinstance(group_depth, int) or group_depth < 1:
        raise ValueError(f'saved_activations: group_depth must be a positive int, got {group_depth!r}')
    params = [*model.parameters(), *model.buffers()]
    if measure_rss is None:
        measure_rss = all(p.device.type == 'cpu' for p in params)
    exclude = [*params, *inputs]
    result = {}
    if measure_rss:
        return_freed_memory_to_os()
        base = status_kib('VmRSS')
        reset_peak_rss()
    with _SavedTensorRecorder(model, exclude) as recorder:
        loss = forward()
    if measure_rss:
        result['forward_peak_mib'] = (status_kib('VmHWM') - base) / 1024
        result['kept_mib'] = (status_kib('VmRSS') - base) / 1024
        reset_peak_rss()
    loss.backward()
    if measure_rss:
        result['backward_peak_mib'] = (status_kib('VmHWM') - base) / 1024
        result['backward_transient_mib'] = result['backward_peak_mib'] - result['kept_mib']
    del loss
    entries = recorder.entries
    for entry in entries:  # where the storage was saved, in words: block, and role inside blocks of its type
        path = entry['module']
        if path is None:
            entry['block'] = entry['role'] = '(outside the model)'
            continue
        block = module_prefix(path, group_depth) or '(model)'
        inner = path[len(block) + 1:] if path.startswith(block + '.') else ''
        entry['block'] = block
        block_type = type(model.get_submodule(block if block != '(model)' else '')).__name__
        entry['role'] = f"{block_type}{'.' + inner if inner else ''} ({entry['type']})"
    result.update(
        saved_mib=sum(e['bytes'] for e in entries) / 2**20,
        by_block=group_saved(entries, lambda e: e['block']),
        by_role=group_saved(entries, lambda e: e['role']),
        by_module=group_saved(entries, lambda e: e['module'] or '(outside the model)'),
        entries=entries,
    )
    return result


def saved_activations_in_fresh_process(target: str, kwargs: Optional[dict] = None, threads: Optional[int] = None,
                                       warmup: int = 1, group_depth: int = 2,
                                       env: Optional[Dict[str, str]] = None) -> dict:
    """:func:`saved_activations` in a new interpreter (its memory figures then count this step alone).

    The child calls ``target`` (``'module:factory'`` or ``'file.py:factory'``) with ``kwargs``; the factory returns
    ``(model, forward, inputs)`` as :func:`saved_activations` takes them. ``warmup`` whole steps run first.
    """
    return run_in_fresh_process('activations', target, dict(kwargs or {}, _group_depth=group_depth), 'cpu',
                                threads, warmup, env)


def activations_of_target(target: str, kwargs: dict, device: str, threads: Optional[int], warmup: int) -> dict:
    """The child's side of :func:`saved_activations_in_fresh_process`."""
    from .timing import set_threads
    return_freed_memory_to_os()  # before anything is allocated, as the memory child does
    set_threads(threads)
    group_depth = kwargs.pop('_group_depth', 2)
    model, forward, inputs = load_factory(target)(**kwargs)
    for _ in range(warmup):
        forward().backward()
    return saved_activations(model, forward, inputs, group_depth, measure_rss=device == 'cpu')


def write_saved_activations(path_stem: str, title: str, command: str, machine: dict, results: Dict[str, dict],
                            top: int = 25) -> None:
    """``<path_stem>.json`` (everything) and ``<path_stem>.md``: the candidates' totals side by side, then for each
    its ``top`` roles and its blocks by saved bytes.

    Args:
        results (dict[str, dict]): Candidate name -> :func:`saved_activations` result.
    """
    mib = (lambda value: '–' if value is None else f'{value:.1f}')
    figures = (('saved_mib', 'saved'), ('forward_peak_mib', 'forward peak'), ('kept_mib', 'kept after forward'),
               ('backward_peak_mib', 'backward peak'), ('backward_transient_mib', 'backward transient'))
    lines = report_header(title, command, machine, [SAVED_ACTIVATIONS_DEFINITION + '.'])
    lines += markdown_table(['candidate'] + [f'{name} MiB' for _, name in figures],
                            [[label] + [mib(res.get(key)) for key, _ in figures] for label, res in results.items()])
    for label, res in results.items():
        total = sum(group['bytes'] for group in res['by_role'].values()) or 1
        for key, heading in (('by_role', 'by role (block type . layer inside it (module type))'),
                             ('by_block', 'by block')):
            groups = list(res[key].items())[:top]
            lines += ['', f'## {label}: saved {heading}', '']
            lines += markdown_table(['where', 'MiB', 'share', 'tensors'],
                                    [[f'`{name}`', mib(group['bytes'] / 2**20), f"{group['bytes'] / total:.1%}",
                                      group['tensors']] for name, group in groups])
    write_json(path_stem + '.json', dict(command=command, machine=machine, definition=SAVED_ACTIVATIONS_DEFINITION,
                                         results=results))
    write_markdown(path_stem + '.md', lines)
