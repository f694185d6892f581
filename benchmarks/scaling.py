r"""Strong and weak scaling over fake CPU devices and processes, with memory.

  python benchmarks/scaling.py [--steps=64]

Each row is a real `launch.py` run of the `:cpu` preset on synthetic
CIFAR-sized data (50,000 images resident on every device), K1 = K2 = 4,
B = 32:
* strong scaling: P = 8 learners (S = 4) on 1, 2, 4, 8 devices and on 2
  processes x 4 devices;
* weak scaling: one learner per device, P = devices (S = min(P, 4)).
Throughput is the median of the logged segments after the first (which
holds the compilation). Peak host memory is the process's max RSS; the
prediction counts the data set once on the host plus one copy per device
and P learners' state (parameters + momentum), and the rest is the Python
and XLA runtime. Fake devices share the machine's cores: on a 2-core VM no
layout can scale compute; this measures what the layouts cost.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STEPS = flags.DEFINE_integer('steps', 64, 'Local steps per run.')
_TRAIN_EXAMPLES = 50_000
_DATA_BYTES = _TRAIN_EXAMPLES * 32 * 32 * 3  # uint8 images.
_CNN_SMALL_PARAMS = 620_362


def launch(workdir, devices, learners, group, extra=(), processes=1):
  """Runs launch.py (one or two processes); returns (images/s, peak MB)."""
  flags_ = [
      f'--config={REPO}/configs/cifar10.py:cpu', f'--workdir={workdir}',
      '--config.data.name=synthetic',
      f'--config.data.synthetic_train_examples={_TRAIN_EXAMPLES}',
      '--config.data.synthetic_test_examples=1000',
      f'--config.train.steps={_STEPS.value}', '--config.train.log_every=16',
      f'--config.hier.num_learners={learners}',
      f'--config.hier.group_size={group}', *extra]
  env = dict(os.environ, PYTHONPATH=REPO,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  if processes > 1:
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port = s.getsockname()[1]
    flags_.append(f'--coordinator_address=127.0.0.1:{port}')
    flags_.append(f'--num_processes={processes}')
  procs = [subprocess.Popen(
      [sys.executable, f'{REPO}/launch.py', *flags_] +
      ([f'--process_id={i}'] if processes > 1 else []),
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
           for i in range(processes)]
  peak_kb = 0
  for proc in procs:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
      raise RuntimeError(f'run in {workdir} failed ({proc.returncode}).')
    peak_kb = max(peak_kb, usage.ru_maxrss)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rates = [json.loads(line)['images_per_s'] for line in f]
  return statistics.median(rates[1:]), peak_kb / 1024


def predicted_mb(devices_per_process, learners_per_process):
  state = learners_per_process * _CNN_SMALL_PARAMS * 4 * 2
  return (_DATA_BYTES * (1 + devices_per_process) + state) / 2**20


def main(argv):
  del argv
  tmp = tempfile.mkdtemp(prefix='hier_avg_scaling_')
  runs = []
  for devices in (1, 2, 4, 8):
    runs.append(('strong', devices, 1, 8, 4))
  runs.append(('strong', 4, 2, 8, 4))
  for devices in (1, 2, 4, 8):
    runs.append(('weak', devices, 1, devices, min(devices, 4)))
  runs.append(('weak', 4, 2, 8, 4))
  print('| scaling | processes x devices | P | images/s | per learner | '
        'peak host MB (per process) | predicted data + state MB |')
  print('|---|---|---|---|---|---|---|')
  for i, (kind, devices, processes, learners, group) in enumerate(runs):
    rate, peak = launch(os.path.join(tmp, str(i)), devices, learners, group,
                        processes=processes)
    predicted = predicted_mb(devices, learners // processes)
    print(f'| {kind} | {processes} x {devices} | {learners} | {rate:,.0f} | '
          f'{rate / learners:,.0f} | {peak:,.0f} | {predicted:,.0f} |',
          flush=True)


if __name__ == '__main__':
  app.run(main)
