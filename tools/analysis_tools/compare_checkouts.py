"""A change's effect on the backbone's speed: two checkouts (each with its extension built) side by side.

A compiled kernel cannot be switched inside one process, and this kind of machine drifts by more than most kernel
changes between two runs. So every round starts one fresh process per checkout, in alternating order, and each
process times the model against a peer (ConvNeXt-T by default) interleaved call by call (``compare_backbones``'
``Runner`` of that checkout). What is compared is the model ÷ peer ratio: the candidate's ratio over the baseline's,
paired round by round, then the median. A baseline older than 186d4e9 times a ``model.eval()`` / ``model.train()``
inside every call (its ``Runner`` switched mode per call), which weighs more on the model with more modules: there
the paired ratio also holds that difference.

With ``--isa best avx2`` the comparison runs once per instruction-set setting (the workers of ``avx2`` with AVX2
forced on mmoverlock, oneDNN, ATen and MKL), into ``OUT/<setting>.{json,md}``, and ``OUT/isa_comparison.{md,json}``
puts the settings side by side.

Usage (the baseline e.g. a ``git worktree`` of the commit before, built with ``setup.py build_ext --inplace``):
    python tools/analysis_tools/compare_checkouts.py --baseline ../base --candidate . --size 512 --rounds 3 \\
        [--isa best avx2] --out benchmarks/backbone/cpu-checkouts/NAME
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PHASES = dict(infer='inference', train_step='training step')


def worker(root: str, model: str, peer: str, size: int, calls: int, threads: int) -> dict:
    """In a fresh process: the median times of ``model`` and ``peer`` per phase, from ``root``'s own code."""
    sys.path[:0] = [root, osp.join(root, 'tools', 'analysis_tools')]
    import mmoverlock
    from compare_backbones import Runner

    from mmoverlock.analysis.measure import interleaved_times, set_threads
    if not osp.abspath(mmoverlock.__file__).startswith(osp.abspath(root) + os.sep):
        raise RuntimeError(f'compare_checkouts: imported mmoverlock from {mmoverlock.__file__}, not from {root}')
    set_threads(threads)
    runners = {name: Runner(name, size, size) for name in (model, peer)}
    times = {}
    for phase in PHASES:
        timing = interleaved_times({name: getattr(r, phase) for name, r in runners.items()}, rounds=calls)
        times[phase] = {name: timing[name].median_s for name in runners}
    return times


def revision(root: str) -> str:
    """``root``'s commit, with ``+dirty`` for uncommitted changes to tracked files."""
    def git(*args):
        return subprocess.run(['git', '-C', root, *args], capture_output=True, text=True).stdout.strip()
    return git('rev-parse', '--short', 'HEAD') + ('+dirty' if git('status', '--porcelain', '-uno') else '')


def run_worker(root: str, args) -> dict:
    command = [sys.executable, osp.abspath(__file__), '--worker', root, '--model', args.model, '--peer', args.peer,
               '--size', str(args.size), '--calls', str(args.calls), '--threads', str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f'compare_checkouts: the worker for {root} failed:\n{done.stderr[-3000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--baseline', help='checkout to compare against (its extension built in place)')
    parser.add_argument('--candidate', default=REPO, help='checkout with the change (default: this one)')
    parser.add_argument('--model', default='overlock', help="compare_backbones model name (default 'overlock')")
    parser.add_argument('--peer', default='convnext', help="the reference in each process (default 'convnext')")
    parser.add_argument('--size', type=int, default=512, help='square input size (default 512)')
    parser.add_argument('--rounds', type=int, default=3, help='processes per checkout, alternating (default 3)')
    parser.add_argument('--calls', type=int, default=3, help='timed calls per model and phase in a process')
    parser.add_argument('--threads', type=int, default=2, help='torch intra-op threads (default 2)')
    parser.add_argument('--out', help='path stem of the report: STEM.json and STEM.md')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    if '--worker' not in argv:  # (a worker imports mmoverlock from its own checkout only)
        _measure().add_isa_argument(parser)
    args = parser.parse_args(argv)
    if args.worker is None and (args.baseline is None or args.out is None):
        parser.error('--baseline and --out are required')
    if min(args.rounds, args.calls, args.threads, args.size) < 1:
        parser.error('--rounds, --calls, --threads and --size must be at least 1')
    return args


def _measure():
    """This checkout's ``mmoverlock.analysis.measure`` (the parent's reporting; workers import their own code)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from mmoverlock.analysis import measure
    return measure


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.model, args.peer, args.size, args.calls, args.threads)))
        return None
    measure = _measure()

    def records(payload):
        return [measure.record(PHASES[phase], metric, summary[key]) for phase, summary in payload['summary'].items()
                for key, metric in (('baseline', 'baseline ratio'), ('candidate', 'candidate ratio'),
                                    ('paired', 'candidate ÷ baseline'))]

    return measure.measure_per_isa(
        args.isa, __file__, argv, lambda setting: compare(args, measure.isa_output(args.out, setting), argv),
        lambda setting: measure.isa_output(args.out, setting) + '.json', osp.join(args.out, 'isa_comparison'),
        f'{args.model} against {args.peer}, two checkouts', records)


def compare(args, stem: str, argv) -> dict:
    """The rounds of both checkouts in this process's environment; writes ``stem``.{json,md}, returns the payload."""
    from mmoverlock.analysis.measure import command_line, machine_info, markdown_table, report_header, write_json, \
        write_markdown
    roots = dict(baseline=osp.abspath(args.baseline), candidate=osp.abspath(args.candidate))
    machine = machine_info()
    rounds = []
    for i in range(args.rounds):
        order = list(roots) if i % 2 == 0 else list(roots)[::-1]
        times = {which: run_worker(roots[which], args) for which in order}
        rounds.append({which: times[which] for which in roots})
        print(f'round {i + 1}: ' + '; '.join(
            f'{which} {PHASES[p]} {t[p][args.model] / t[p][args.peer]:.3f}' for which, t in rounds[-1].items()
            for p in PHASES), flush=True)

    def ratios(which, phase):
        return [r[which][phase][args.model] / r[which][phase][args.peer] for r in rounds]

    summary = {}
    for phase in PHASES:
        base, cand = ratios('baseline', phase), ratios('candidate', phase)
        summary[phase] = dict(baseline=statistics.median(base), candidate=statistics.median(cand),
                              paired=statistics.median(c / b for c, b in zip(cand, base)), baseline_rounds=base,
                              candidate_rounds=cand)
    revisions = {which: revision(root) for which, root in roots.items()}
    payload = dict(command=command_line(__file__, argv), machine=machine,
                   revisions=revisions, model=args.model, peer=args.peer, size=args.size, rounds=rounds,
                   summary=summary)
    write_json(stem + '.json', payload)
    notes = [f'Baseline {revisions["baseline"]}, candidate {revisions["candidate"]}; {args.model} against '
             f'{args.peer} at {args.size}x{args.size}, batch 1. {args.rounds} rounds, each one fresh process per '
             f'checkout (alternating which goes first), each timing the two models interleaved, median of '
             f'{args.calls} calls. Ratios: {args.model} ÷ {args.peer} in the same process.']
    rows = [[PHASES[p], f'{s["baseline"]:.3f}', f'{s["candidate"]:.3f}', f'{s["paired"]:.3f}',
             ', '.join(f'{c:.3f}/{b:.3f}' for c, b in zip(s['candidate_rounds'], s['baseline_rounds']))]
            for p, s in summary.items()]
    lines = report_header('Two checkouts side by side', payload['command'], machine, notes)
    lines += markdown_table(['phase', 'baseline ratio', 'candidate ratio', 'candidate ÷ baseline (paired median)',
                             'rounds (candidate/baseline)'], rows)
    write_markdown(stem + '.md', lines)
    print('\n'.join(lines))
    return payload


if __name__ == '__main__':
    main()
