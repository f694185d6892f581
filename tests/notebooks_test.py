"""The notebooks run end to end on CPU with tiny settings, and are stored clean.

Each notebook is executed with nbclient in a fresh kernel, with a cell of
tiny settings inserted after its `parameters` cell (as papermill does), and
the files it wrote are checked.
"""

import csv
import glob
import json
import os
import re
from unittest import mock

from absl.testing import absltest
import pytest
import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, 'notebooks')
# Tiny synthetic data: 8x8 images keep compilation and steps short.
TINY_DATA = {'data.synthetic_train_examples': 256,
             'data.synthetic_test_examples': 64,
             'data.synthetic_image_size': 8,
             'data.batch_size': 8}


def inject_parameters(nb, parameters: dict) -> None:
  """Inserts a cell setting `parameters` right after the `parameters` cell."""
  tagged = [i for i, cell in enumerate(nb.cells)
            if 'parameters' in cell.metadata.get('tags', [])]
  assert len(tagged) == 1, f'expected one parameters cell, found {tagged}'
  cell = nbformat.v4.new_code_cell(
      '\n'.join(f'{key} = {value!r}' for key, value in parameters.items()),
      metadata={'tags': ['injected-parameters']})
  nb.cells.insert(tagged[0] + 1, cell)


def execute(name: str, parameters: dict, folder: str):
  """Runs notebooks/`name` in `folder`; returns the executed notebook."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  inject_parameters(nb, parameters)
  env = {
      # The kernel runs in `folder`, outside the checkout.
      'HIER_AVG_REPO': REPO,
      'JAX_PLATFORMS': 'cpu',
      # Points that differ only in the seed compile the same programs: the
      # sweep's processes share them through this cache.
      'JAX_COMPILATION_CACHE_DIR': os.path.join(folder, 'jax_cache'),
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
      'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
  }
  # The kernel (and the sweep's launch.py processes) inherit this process's
  # environment.
  with mock.patch.dict(os.environ, env):
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name='python3',
        resources={'metadata': {'path': folder}}).execute()
  return nb


def outputs(nb, kind: str) -> list:
  """Every output of `kind` (a MIME type, or 'stream') in cell order."""
  found = []
  for cell in nb.cells:
    for output in cell.get('outputs', []):
      if kind == 'stream' and output.output_type == 'stream':
        found.append(output.text)
      elif kind in output.get('data', {}):
        found.append(output.data[kind])
  return found


@pytest.mark.slow
class QuickstartTest(absltest.TestCase):

  def test_trains_hier_avg_and_kavg_and_plots_them(self):
    folder = self.create_tempdir().full_path
    root = os.path.join(folder, 'runs')
    nb = execute('quickstart.ipynb', {
        'STEPS': 8, 'DATA_NAME': 'synthetic', 'MODEL_NAME': 'mlp',
        'NUM_LEARNERS': 4, 'GROUP_SIZE': 2, 'K1': 2, 'K2': 2,
        'EVAL_EVERY': 4, 'LOG_EVERY': 2, 'WORKDIR_ROOT': root,
        'OVERRIDES': TINY_DATA}, folder)

    summaries = {}
    for name in ('hier_avg', 'kavg'):
      with open(os.path.join(root, name, 'summary.json')) as f:
        summaries[name] = json.load(f)
      self.assertEqual(summaries[name]['steps'], 8)
      self.assertEqual(summaries[name]['config']['hier']['num_learners'], 4)
      self.assertEqual(summaries[name]['config']['model']['name'], 'mlp')
    hier, kavg = summaries['hier_avg'], summaries['kavg']
    self.assertEqual((hier['config']['hier']['group_size'],
                      hier['config']['hier']['k2']), (2, 2))
    self.assertEqual((kavg['config']['hier']['group_size'],
                      kavg['config']['hier']['k2']), (1, 1))
    # Global averaging every K1*K2 = 4 steps vs every K1 = 2.
    self.assertEqual((hier['global_averagings'], hier['local_averagings']),
                     (2, 2))
    self.assertEqual(kavg['global_averagings'], 4)
    self.assertLess(hier['global_bytes_per_learner'],
                    kavg['global_bytes_per_learner'])

    self.assertGreater(os.path.getsize(os.path.join(root, 'comparison.png')),
                       10_000)
    self.assertLen(outputs(nb, 'image/png'), 1)
    text = ''.join(outputs(nb, 'stream'))
    self.assertIn('platform cpu: 8 x', text)
    # The layouts the two runs used: 1 learner per fake device.
    self.assertIn("hier_avg  learner grid {'node': 2, 'local': 2} on mesh "
                  "{'node': 2, 'local': 2}", text)
    self.assertIn("kavg      learner grid {'node': 4, 'local': 1} on mesh "
                  "{'node': 4, 'local': 1}", text)
    [table] = outputs(nb, 'text/markdown')
    self.assertIn(f"| hier_avg | {hier['test_accuracy']:.4f} |", table)
    self.assertIn(f"| kavg | {kavg['test_accuracy']:.4f} |", table)


@pytest.mark.slow
class HierarchyStudyTest(absltest.TestCase):

  def test_sweep_table_plots_and_conclusion(self):
    folder = self.create_tempdir().full_path
    root = os.path.join(folder, 'study')
    # Global averaging every 2 steps (K-AVG) vs every 4 in three levels.
    variants = {'kavg_k2': {'hier.group_size': 1, 'hier.k1': 2,
                            'hier.k2': 1},
                'three_levels': {'hier.levels': ((1, 1), (2, 2), (4, 4))}}
    nb = execute('hierarchy_study.ipynb', {
        'ROOT': root, 'NUM_LEARNERS': 4, 'VARIANTS': variants,
        'SEEDS': [0, 1], 'STEPS': 8, 'EVAL_EVERY': 4, 'LOG_EVERY': 4,
        'MODEL_NAME': 'mlp', 'PARALLEL': 2,
        # One device, learners vmapped: no fake devices, quick compiles.
        'OVERRIDES': {'mesh.node_devices': 1, 'mesh.local_devices': 1,
                      'runtime.learner_loop': 'vmap', **TINY_DATA}}, folder)

    with open(os.path.join(root, 'results.csv')) as f:
      rows = list(csv.DictReader(f))
    self.assertCountEqual([r['point'] for r in rows],
                          [f'{v},seed={s}' for v in variants for s in (0, 1)])
    for row in rows:
      self.assertEqual(row['steps'], '8')
    with open(os.path.join(root, 'results.md')) as f:
      table = f.read()
    for variant in variants:
      self.assertLen([line for line in table.splitlines()
                      if line.startswith(f'| {variant} | 2 |')], 1)
    plots = sorted(os.path.basename(p)
                   for p in glob.glob(os.path.join(root, '*.png')))
    self.assertEqual(plots, ['accuracy_vs_bytes.png', 'accuracy_vs_epoch.png',
                             'accuracy_vs_wall.png', 'drift_vs_step.png',
                             'train_loss_vs_epoch.png'])
    # The report's five plots, the drift curves among them.
    self.assertLen(outputs(nb, 'image/png'), 5)

    markdown = outputs(nb, 'text/markdown')
    self.assertEqual(markdown[0], table)
    # The conclusion names a variant with the best mean accuracy.
    means = {v: sum(float(r['test_accuracy']) for r in rows
                    if r['group'] == v) / 2 for v in variants}
    named = re.search(r'Best test accuracy: \*\*(\S+)\*\*', markdown[1])
    self.assertIsNotNone(named, markdown[1])
    self.assertAlmostEqual(means[named[1]], max(means.values()), places=9,
                           msg=markdown[1])
    if named[1] == 'three_levels':
      self.assertIn('**three_levels** also has the fewest global averagings '
                    '(2).', markdown[1])
    else:
      self.assertIn('Fewest global averagings: **three_levels** (2 vs 4)',
                    markdown[1])


class StoredNotebooksTest(absltest.TestCase):

  def test_valid_and_without_outputs(self):
    paths = sorted(glob.glob(os.path.join(NOTEBOOKS, '*.ipynb')))
    self.assertEqual([os.path.basename(p) for p in paths],
                     ['hierarchy_study.ipynb', 'quickstart.ipynb'])
    for path in paths:
      nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
      nbformat.validate(nb)
      self.assertEqual(nb.nbformat, 4, path)
      tags = [cell.metadata.get('tags', []) for cell in nb.cells]
      self.assertEqual(sum('parameters' in t for t in tags), 1, path)
      for cell in nb.cells:
        if cell.cell_type == 'code':
          self.assertEqual(cell.outputs, [], f'{path}: {cell.source[:60]}')
          self.assertIsNone(cell.execution_count, path)
        self.assertNotIn('injected-parameters', cell.metadata.get('tags', []))
      # Colab runs the first code cell first: it must fetch the repository.
      first_code = next(c for c in nb.cells if c.cell_type == 'code')
      self.assertIn("'google.colab' in sys.modules", first_code.source)
      self.assertIn('REPO_URL', first_code.source)


if __name__ == '__main__':
  absltest.main()
