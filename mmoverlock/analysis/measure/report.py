"""Result files of the benchmarks: JSON with everything, and markdown tables that name the command that produced
them and the machine it ran on; one comparison across instruction-set settings."""
import json
import os
import os.path as osp
import shlex
from typing import Callable, Dict, List, Optional, Sequence

from .isa import run_isa_settings
from .machine import describe_machine

_REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def command_line(script: str, argv: Sequence[str]) -> str:
    """``python <script> <args>``, the script relative to the repository when it lies inside it."""
    script = osp.abspath(script)
    if script.startswith(_REPO_ROOT + os.sep):
        script = osp.relpath(script, _REPO_ROOT)
    return ' '.join(['python', script] + [shlex.quote(str(a)) for a in argv])


def ratio(value: Optional[float], base: Optional[float]) -> Optional[float]:
    """``value / base``, ``None`` when either is missing or the base is zero."""
    return None if value is None or not base else value / base


def with_ratio(value: Optional[float], value_ratio: Optional[float], fmt: str = '{:.3f}') -> str:
    """``'1.234 (1.19×)'``; ``'–'`` for a missing value."""
    if value is None:
        return '–'
    text = fmt.format(value)
    return f'{text} ({value_ratio:.2f}×)' if value_ratio is not None else text


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    """Lines of a markdown table."""
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return lines


def report_header(title: str, command: str, machine: dict, notes: Sequence[str] = ()) -> List[str]:
    """A report's opening lines: title, the command, the machine (:func:`describe_machine`) and notes."""
    lines = [f'# {title}', '', f'Command: `{command}`', '', f'Machine: {describe_machine(machine)}.', '']
    for note in notes:
        lines += [note, '']
    return lines


def write_json(path: str, payload: dict) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(payload, f, indent=1)


def write_markdown(path: str, lines: Sequence[str]) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write('\n'.join(lines).rstrip('\n') + '\n')


def record(item: str, metric: str, value: Optional[float], value_ratio: Optional[float] = None) -> dict:
    """One figure of a comparison across settings: what, which metric, the value and its ratio to the run's
    baseline (``None`` if the tool has none)."""
    return dict(item=item, metric=metric, value=value, ratio=value_ratio)


def write_isa_comparison(path_stem: str, title: str, command: str, records: Dict[str, List[dict]],
                         machines: Dict[str, dict], baseline: Optional[str] = None) -> dict:
    """The figures of every setting side by side, with each setting's ratio to its own baseline and the ratio of
    every later setting to the first; writes ``<path_stem>.json`` and ``<path_stem>.md``.

    Args:
        path_stem (str): Output path without extension.
        title (str): Report title.
        command (str): The command that produced all settings.
        records (dict[str, list[dict]]): Setting -> its :func:`record` list.
        machines (dict[str, dict]): Setting -> its :func:`~.machine.machine_info`.
        baseline (str, optional): What the per-setting ratios are to, for the legend.

    Returns:
        dict: The JSON payload.
    """
    settings = list(records)
    first = settings[0]
    keys: List[tuple] = []
    table: Dict[tuple, Dict[str, dict]] = {}
    for setting in settings:
        for rec in records[setting]:
            key = (rec['item'], rec['metric'])
            if key not in table:
                keys.append(key)
                table[key] = {}
            table[key][setting] = rec
    columns = ['item', 'metric'] + settings + [f'{s} ÷ {first}' for s in settings[1:]]
    rows, payload_rows = [], []
    for key in keys:
        cells = table[key]
        values = {s: cells[s]['value'] if s in cells else None for s in settings}
        ratios = {s: cells[s]['ratio'] if s in cells else None for s in settings}
        across = {s: ratio(values[s], values[first]) for s in settings[1:]}
        rows.append(list(key) + [with_ratio(values[s], ratios[s], '{:.4g}') for s in settings] +
                    [f'{across[s]:.2f}×' if across[s] is not None else '–' for s in settings[1:]])
        payload_rows.append(dict(item=key[0], metric=key[1], values=values, ratios=ratios, across_settings=across))
    lines = [f'# {title}: instruction-set settings compared', '', f'Command: `{command}`', '']
    lines += [f'- {s}: {describe_machine(machines[s])}' for s in settings]
    legend = f'in brackets: the ratio to {baseline} measured in the same process' if baseline else ''
    lines += ['', f'Each setting ran in its own process; {legend + "; " if legend else ""}the last columns divide a '
              f'setting\'s value by the {first} value.', '']
    lines += markdown_table(columns, rows)
    payload = dict(command=command, settings=settings, machines=machines, baseline=baseline, rows=payload_rows)
    write_json(path_stem + '.json', payload)
    write_markdown(path_stem + '.md', lines)
    return payload


def measure_per_isa(settings: Optional[Sequence[str]], script: str, argv: Sequence[str],
                    measure: Callable[[Optional[str]], dict], results_json: Callable[[str], str], comparison_stem: str,
                    title: str, records: Callable[[dict], List[dict]], baseline: Optional[str] = None):
    """A tool's ``--isa`` handling: no settings -> ``measure(None)`` here; else each setting measured here or in a
    child (:func:`~.isa.run_isa_settings`), and with several, :func:`write_isa_comparison` at ``comparison_stem``.

    Args:
        settings (Sequence[str], optional): The ``--isa`` values.
        script (str): The tool's file. argv (Sequence[str]): Its arguments as given.
        measure (Callable): Runs the tool's measurement for a setting (``None``: no ``--isa``), writes its results
            and returns them (with ``command`` and ``machine``).
        results_json (Callable[[str], str]): Where a setting's results JSON is written.
        comparison_stem (str): Path of the comparison without extension.
        title (str): Its title. records (Callable): A setting's results -> :func:`record` list.
        baseline (str, optional): What the per-setting ratios are to.

    Returns:
        dict: The results (no settings), or setting -> results.
    """
    if not settings:
        return measure(None)

    def load(setting):
        with open(results_json(setting)) as f:
            return json.load(f)

    results = run_isa_settings(settings, script, argv, measure, load)
    if len(results) > 1:
        write_isa_comparison(comparison_stem, title, command_line(script, argv),
                             {s: records(r) for s, r in results.items()},
                             {s: r['machine'] for s, r in results.items()}, baseline)
        print(f'wrote {comparison_stem}.json and {comparison_stem}.md')
    return results
