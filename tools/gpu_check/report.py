"""Summary of a tools/gpu_check.sh run: summary.json and summary.md from its steps, test reports and figures.

Exits non-zero when a GPU run skipped a test for any reason other than a missing second GPU: on the GPU machine
every CUDA test must run.
"""
import argparse
import glob
import json
import os.path as osp
import sys
import xml.etree.ElementTree as ET

#: The only reasons a GPU run may skip a test: a second GPU, or no cuobjdump to read the built library with.
ALLOWED_SKIPS = ('two CUDA GPUs', 'no cuobjdump')


def read_steps(path):
    steps = []
    if osp.exists(path):
        with open(path) as f:
            for line in f:
                name, rc, seconds, command = line.rstrip('\n').split('\t', 3)
                steps.append(dict(name=name, ok=rc == '0', rc=rc, seconds=int(seconds), command=command))
    return steps


def read_junit(path):
    """Counts and the failed / skipped test ids with their messages."""
    suites = ET.parse(path).getroot()
    result = dict(tests=0, failures=[], errors=[], skipped=[])
    for case in suites.iter('testcase'):
        result['tests'] += 1
        test_id = f"{case.get('classname')}::{case.get('name')}"
        for kind, key in (('failure', 'failures'), ('error', 'errors'), ('skipped', 'skipped')):
            for node in case.findall(kind):
                result[key].append(dict(test=test_id, message=(node.get('message') or '')[:300]))
    return result


def load_json(path):
    if osp.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def existing(out, relative):
    """``relative`` when that file exists under ``out``, else ``None``."""
    return relative if osp.exists(osp.join(out, relative)) else None


def markdown(summary):
    mode = summary['mode'] + (', quick' if summary.get('quick') else '')
    lines = [f"# gpu_check ({mode}): {'passed' if summary['ok'] else 'FAILED'}", '',
             '| step | result | seconds |', '|---|---|---|']
    lines += [f"| {s['name']} | {'ok' if s['ok'] else 'FAILED (' + s['rc'] + ')'} | {s['seconds']} |"
              for s in summary['steps']]
    for name, tests in summary['tests'].items():
        lines += ['', f"## {name}: {tests['tests']} tests, {len(tests['failures'])} failed, "
                  f"{len(tests['errors'])} errors, {len(tests['skipped'])} skipped"]
        lines += [f"- {kind}: `{t['test']}`: {t['message']}" for kind in ('failures', 'errors', 'skipped')
                  for t in tests[kind]]
    backbone = summary.get('backbone')
    if backbone:
        lines += ['', f"## OverLoCK-{backbone['arch'].upper()} backbone training step ({backbone['device_name']})", '',
                  f"batch {backbone['batch_size']}, {backbone['shape'][0]}x{backbone['shape'][1]}, amp "
                  f"{backbone['amp']}: {backbone['step_s_median'] * 1e3:.1f} ms median of {backbone['iters']}, "
                  f"peak memory {backbone['peak_memory_mib']:.0f} MiB ({backbone['peak_memory_method']})"]
    for title, path in (('ContMix op benchmark', summary.get('contmix_results_md')),
                        ('Depthwise op benchmark', summary.get('depthwise_results_md')),
                        ('Backbones compared', summary.get('backbone_compare_md'))):
        if path:
            lines += ['', f'## {title}: see {path}']
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mode', choices=['gpu', 'dry'], required=True)
    parser.add_argument('--quick', action='store_true', help='the run was tools/gpu_check.sh --quick')
    parser.add_argument('--steps', required=True, help='the steps table written by gpu_check.sh')
    parser.add_argument('--junit-dir', required=True)
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)

    steps = read_steps(args.steps)
    tests = {osp.basename(p)[:-4]: read_junit(p) for p in sorted(glob.glob(osp.join(args.junit_dir, '*.xml')))}
    unexpected_skips = [t for r in tests.values() for t in r['skipped']
                        if not any(reason in t['message'] for reason in ALLOWED_SKIPS)]
    summary = dict(mode=args.mode, quick=args.quick, steps=steps, tests=tests,
                   backbone=load_json(osp.join(args.out, 'backbone.json')),
                   contmix=load_json(osp.join(args.out, 'contmix', 'results.json')),
                   contmix_results_md=existing(args.out, 'contmix/results.md'),
                   depthwise_results_md=existing(args.out, f"depthwise/{'cuda' if args.mode == 'gpu' else 'best'}"
                                                 '/depthwise.md'),
                   backbone_compare_md=existing(args.out, 'backbone_compare/results.md'))
    summary['unexpected_skips'] = unexpected_skips if args.mode == 'gpu' else []
    summary['ok'] = bool(steps) and all(s['ok'] for s in steps) and not summary['unexpected_skips']
    with open(osp.join(args.out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    text = markdown(summary)
    with open(osp.join(args.out, 'summary.md'), 'w') as f:
        f.write(text)
    print(text)
    if summary['unexpected_skips']:
        print(f"{len(summary['unexpected_skips'])} GPU tests were skipped; on the GPU machine all must run",
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
