"""Smoke training (``make smoke-train``): generate the bundled data, train OverLoCK detectors and segmentors on it on
the CPU, prove they learn.

Steps (each through the project's real command-line tools and mmdet/mmseg runners, as a user would run them):

1. ``tools/misc/generate_data.py``: the synthetic COCO-format and ADE20K-format shapes sets under ``data/generated``;
2. for the smoke Cascade Mask R-CNN (OverLoCK-pico) and the smoke UperNet (OverLoCK-pico):
   a. save the freshly initialised model and evaluate it with ``tools/test.py`` (the untrained baseline),
   b. train it with ``tools/train.py`` for a few minutes,
   c. evaluate the trained checkpoint with ``tools/test.py`` (COCO bbox/segm AP, mIoU),
   d. run ``demo/image_demo.py`` on the held-out images;
3. print untrained vs trained metrics and where the metrics, logs, checkpoints and pictures are; write
   ``summary.json``. The job fails (exit 1) if a trained model is not clearly better than its untrained self.

Usage (after tools/setup_env.sh):
    .venv/bin/python tools/misc/smoke_train.py [--out-dir outputs/smoke_train] [--tasks det seg]
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time
import warnings

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA_ROOT = osp.join('data', 'generated')

#: Per task: config, headline metrics (key, label, minimal gain over the untrained model for "it learned").
TASKS = {
    'det': dict(
        name='Cascade Mask R-CNN, OverLoCK-pico (COCO-format shapes)',
        config='configs/_smoke_/cascade-mask-rcnn_overlock-pico_fpn_1xb8-smoke_shapes-coco.py',
        metrics=(('coco/bbox_mAP', 'bbox AP', 0.10), ('coco/bbox_mAP_50', 'bbox AP50', 0.10),
                 ('coco/segm_mAP', 'segm AP', 0.10), ('coco/segm_mAP_50', 'segm AP50', 0.10)),
        demo_images=osp.join(DATA_ROOT, 'coco', 'held_out')),
    'seg': dict(
        name='UperNet, OverLoCK-pico (ADE20K-format shapes)',
        config='configs/_smoke_/upernet_overlock-pico_1xb8-smoke_shapes-128x128.py',
        metrics=(('mIoU', 'mIoU', 15.0), ('aAcc', 'aAcc', 5.0)),
        demo_images=osp.join(DATA_ROOT, 'ade', 'held_out')),
}
#: Log lines echoed to the console while a tool runs (everything goes to the step's log file).
ECHO = ('Epoch(train)', 'Iter(train)', 'Epoch(val)', 'Iter(val)', 'Epoch(test)', 'Iter(test)', 'Saving checkpoint',
        'Error', 'Traceback', 'pictures in', 'wrote ')
#: mmengine's log-line prefix (``11/25 16:03:44 - mmengine - INFO - ``), dropped from the echo.
LOG_PREFIX = re.compile(r'^\d\d/\d\d \d\d:\d\d:\d\d - mmengine - [A-Z]+ - ')


def tool_env():
    """Environment of the tools: the CPU, and torch threads = cores - 1 unless OMP_NUM_THREADS is set.

    The GPU is hidden (unless ``CUDA_VISIBLE_DEVICES`` is set): the runners would pick CUDA, and the set-up's mmcv
    has CPU ops only.

    The models here are small, so a second intra-op thread gains little, while one core left to the data-loading
    worker and the rest of the machine keeps OpenMP's barriers from stalling whenever another process takes a core
    (on a 2-core machine shared with other work, those stalls made training steps up to 10x slower).
    """
    env = dict(os.environ)
    env.setdefault('CUDA_VISIBLE_DEVICES', '')
    env.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 2) - 1)))
    return env


def run_tool(args, log_path):
    """Run ``python <script> <args...>`` from the repository root, log everything, echo progress; raise on failure."""
    cmd = [sys.executable] + args
    print(f'$ {" ".join(cmd[1:])}   (log: {osp.relpath(log_path, ROOT)})', flush=True)
    start = time.perf_counter()
    with open(log_path, 'w', buffering=1) as log, subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env=tool_env()) as proc:
        for line in proc.stdout:
            log.write(line)
            if any(marker in line for marker in ECHO):  # the step counter and the losses, not the timestamp
                print('    ' + LOG_PREFIX.sub('', line).strip()[:170], flush=True)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = ''.join(f.readlines()[-30:])
        raise RuntimeError(f'{" ".join(args)} failed (exit {proc.returncode}); last lines of {log_path}:\n{tail}')
    return time.perf_counter() - start


def save_untrained_checkpoint(config, path, seed=0):
    """Save the config's model right after initialisation (same seed as training), with its dataset_meta.

    The model comes from :func:`mmoverlock.apis.build_model`: the config's model, ``init_weights`` run with
    mmengine's per-parameter report silenced, no pretrained download.
    """
    # mmengine imports pkg_resources, which warns on every import with setuptools 80 (kept below 81 for mmcv)
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
    import torch
    from mmengine.runner import set_random_seed

    from mmoverlock.apis import build_model

    set_random_seed(seed)
    model, cfg = build_model(osp.join(ROOT, config))
    meta = dict(dataset_meta=dict(cfg.train_dataloader.dataset.metainfo), note='untrained: weights at init')
    torch.save(dict(state_dict=model.state_dict(), meta=meta), path)


def last_checkpoint(work_dir):
    """The checkpoint mmengine's CheckpointHook wrote last (its ``last_checkpoint`` file names it)."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def read_metrics(path, keys):
    """The headline metrics of a test run; CocoMetric returns nothing when a model makes no detection at all,
    which scores 0 (an untrained detector can do that)."""
    with open(path) as f:
        metrics = json.load(f)
    return {key: float(metrics.get(key, 0.0)) for key in keys}


def run_task(key, out_dir, times):
    """Untrained evaluation, training, trained evaluation and demo for one task; returns its summary entry."""
    task = TASKS[key]
    work_dir = osp.join(out_dir, key)
    os.makedirs(work_dir, exist_ok=True)
    print(f'\n=== {task["name"]} ===', flush=True)

    untrained = osp.join(work_dir, 'untrained.pth')
    save_untrained_checkpoint(task['config'], untrained)
    untrained_json = osp.join(work_dir, 'metrics_untrained.json')
    times[f'{key}_eval_untrained_s'] = run_tool(
        ['tools/test.py', task['config'], untrained, '--work-dir', osp.join(work_dir, 'eval_untrained'),
         '--metrics-json', untrained_json], osp.join(work_dir, 'eval_untrained.log'))

    train_dir = osp.join(work_dir, 'train')
    times[f'{key}_train_s'] = run_tool(['tools/train.py', task['config'], '--work-dir', train_dir],
                                       osp.join(work_dir, 'train.log'))
    checkpoint = last_checkpoint(train_dir)
    trained_json = osp.join(work_dir, 'metrics_trained.json')
    times[f'{key}_eval_trained_s'] = run_tool(
        ['tools/test.py', task['config'], checkpoint, '--work-dir', osp.join(work_dir, 'eval_trained'),
         '--metrics-json', trained_json], osp.join(work_dir, 'eval_trained.log'))

    demo_dir = osp.join(work_dir, 'demo')
    times[f'{key}_demo_s'] = run_tool(
        ['demo/image_demo.py', task['demo_images'], task['config'], checkpoint, '--out-dir', demo_dir],
        osp.join(work_dir, 'demo.log'))

    keys = [name for name, _label, _gain in task['metrics']]
    before, after = read_metrics(untrained_json, keys), read_metrics(trained_json, keys)
    rows = [dict(metric=label, key=name, untrained=before[name], trained=after[name], min_gain=gain,
                 learned=after[name] >= before[name] + gain) for name, label, gain in task['metrics']]
    return dict(name=task['name'], config=task['config'], checkpoint=checkpoint, metrics=rows,
                metrics_files=[untrained_json, trained_json], logs=work_dir, pictures=osp.join(demo_dir, 'vis'))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train and evaluate OverLoCK detectors/segmentors on bundled data')
    parser.add_argument('--out-dir', default='outputs/smoke_train', help='where work dirs, metrics and pictures go')
    parser.add_argument('--tasks', nargs='+', choices=sorted(TASKS), default=['det', 'seg'])
    parser.add_argument('--regenerate', action='store_true', help='rewrite data/generated even if present')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.chdir(ROOT)
    out_dir = osp.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    times = {}
    if args.regenerate or not osp.exists(osp.join(DATA_ROOT, 'meta.json')):
        times['generate_data_s'] = run_tool(['tools/misc/generate_data.py', '--out', DATA_ROOT],
                                            osp.join(out_dir, 'generate_data.log'))
    else:
        print(f'using the existing {DATA_ROOT} (--regenerate to rewrite it)')

    results = {key: run_task(key, out_dir, times) for key in args.tasks}
    times['total_s'] = time.perf_counter() - start

    print('\n' + '=' * 78 + '\nSmoke training summary (CPU, trained from scratch on the bundled synthetic data)')
    for key, res in results.items():
        print(f'\n{res["name"]}\n  {"metric":<10} {"untrained":>10} {"trained":>10}')
        for row in res['metrics']:
            print(f'  {row["metric"]:<10} {row["untrained"]:>10.3f} {row["trained"]:>10.3f}'
                  f'{"" if row["learned"] else "   <-- not above untrained + " + str(row["min_gain"])}')
        print(f'  metrics:  {", ".join(osp.relpath(p, ROOT) for p in res["metrics_files"])}\n'
              f'  pictures: {osp.relpath(res["pictures"], ROOT)}/\n'
              f'  model:    {osp.relpath(res["checkpoint"], ROOT)}')
    print('\ntimes (s): ' + ', '.join(f'{k[:-2]} {v:.0f}' for k, v in times.items()))
    summary = dict(results=results, times=times)
    with open(osp.join(out_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    print(f'summary: {osp.relpath(osp.join(out_dir, "summary.json"), ROOT)}')
    learned = all(row['learned'] for res in results.values() for row in res['metrics'])
    print('RESULT: ' + ('every trained model is clearly above its untrained self' if learned
                        else 'FAILED: a trained model is not clearly above its untrained self'))
    return 0 if learned else 1


if __name__ == '__main__':
    sys.exit(main())
