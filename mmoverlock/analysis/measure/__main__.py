"""``python -m mmoverlock.analysis.measure memory --target T --kwargs JSON``: the child process of
:func:`~mmoverlock.analysis.measure.peak_memory_in_fresh_process`; prints one JSON line."""
import argparse
import json

from .memory import measure_target


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m mmoverlock.analysis.measure', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    memory = sub.add_parser('memory', help='peak memory of one call in this fresh process')
    memory.add_argument('--target', required=True, help="'module:factory' or 'file.py:factory'")
    memory.add_argument('--kwargs', default='{}', help='the factory\'s keyword arguments, as a JSON object')
    memory.add_argument('--device', default='cpu')
    memory.add_argument('--threads', type=int)
    memory.add_argument('--warmup', type=int, default=1)
    args = parser.parse_args(argv)
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        parser.error(f'--kwargs must be a JSON object, got {args.kwargs!r}')
    print(json.dumps(measure_target(args.target, kwargs, args.device, args.threads, args.warmup)))


if __name__ == '__main__':
    main()
