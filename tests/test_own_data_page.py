"""docs/own_data.md runs as written: its python blocks, in order, in one namespace."""

import pathlib
import re

import numpy as np
import pytest

from tfcredit.testing import clean_gin  # noqa: F401  (a fixture)

PAGE = pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'own_data.md'


def _blocks():
  return re.findall(r'```python\n(.*?)```', PAGE.read_text(encoding='utf-8'),
                    flags=re.S)


@pytest.mark.slow  # The docs page's commands, run as written.
def test_own_data_page_runs_and_learns(tmp_path, monkeypatch, clean_gin):
  del clean_gin
  monkeypatch.chdir(tmp_path)
  namespace = {}
  blocks = _blocks()
  assert len(blocks) == 3
  for block in blocks:
    exec(compile(block, str(PAGE), 'exec'), namespace)  # pylint: disable=exec-used
  results, classifier = namespace['results'], namespace['classifier']
  vocabulary = len(namespace['corpus'].vocabulary_tokens())
  for result in results.values():
    # Both methods learn the corpus's word frequencies at least (the uniform
    # guess has the vocabulary's perplexity).
    assert result['valid_perplexity'] < 0.8 * vocabulary
  labels = np.load(tmp_path / 'my_sequences.npz')['targets']
  majority = max(labels.mean(), 1 - labels.mean())
  assert classifier['valid_accuracy'] > majority + 0.1
  for name in results:
    assert (tmp_path / 'runs' / 'own_text' / name / 'final_metrics.json').exists()
