"""``python -m mmoverlock.analysis.measure memory|activations --target T --kwargs JSON``: the child process of
:func:`~mmoverlock.analysis.measure.peak_memory_in_fresh_process` (``memory``) and of
:func:`~mmoverlock.analysis.measure.saved_activations_in_fresh_process` (``activations``); prints one JSON line."""
import argparse
import json

from .activations import activations_of_target
from .memory import measure_target

COMMANDS = dict(memory=(measure_target, 'peak memory of one call in this fresh process'),
                activations=(activations_of_target, 'saved tensors by module and the memory of one training step'))


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m mmoverlock.analysis.measure', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    for name, (_, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        command.add_argument('--target', required=True, help="'module:factory' or 'file.py:factory'")
        command.add_argument('--kwargs', default='{}', help='the factory\'s keyword arguments, as a JSON object')
        command.add_argument('--device', default='cpu')
        command.add_argument('--threads', type=int)
        command.add_argument('--warmup', type=int, default=1)
    args = parser.parse_args(argv)
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        parser.error(f'--kwargs must be a JSON object, got {args.kwargs!r}')
    run = COMMANDS[args.command][0]
    print(json.dumps(run(args.target, kwargs, args.device, args.threads, args.warmup)))


if __name__ == '__main__':
    main()
