"""Evaluates an export: ``tfcredit-evaluate --saved_model=saved_models/run/1``.

Loads only the SavedModel (no tfcredit model code), rebuilds the task's data from
the export's ``task.json`` asset, and reports the task metric on a split. The last
line printed is one JSON object. Exit codes: 0 success, 2 bad usage, 1 data failure.
"""

import json
import sys
from typing import List, Optional, Sequence

from absl import flags

from tfcredit.cli import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  define = common.define_flag
  define(flags.DEFINE_string, 'saved_model', None, 'Path of an export '
         '(saved_models/<run>/<n>).')
  define(flags.DEFINE_enum, 'split', 'test', ['train', 'valid', 'test'],
         'Split to evaluate.')
  define(flags.DEFINE_string, 'data_dir', None, 'Data directory; default '
         '$TFCREDIT_DATA_DIR or ~/.cache/tfcredit.')
  define(flags.DEFINE_integer, 'batch_size', None, 'Evaluation batch size; '
         "default: the one used in training (so the metric matches the trainer's).")


def run(argv: List[str]) -> int:
  """Evaluates with the parsed flags; returns the exit code."""
  code = common.unexpected_arguments(argv, '; use --saved_model and --split')
  if code is not None:
    return code
  import tfcredit  # pylint: disable=g-import-not-at-top
  from tfcredit import evaluation  # pylint: disable=g-import-not-at-top

  try:
    if not FLAGS.saved_model:
      raise tfcredit.ConfigurationError(
          '--saved_model is required: the path of an export, e.g. '
          'saved_models/quickstart/1')
    if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
      raise tfcredit.ConfigurationError(
          f'--batch_size={FLAGS.batch_size} must be at least 1 (or left out to '
          'use the training batch size)')
    result = evaluation.evaluate_export(FLAGS.saved_model, FLAGS.split,
                                        data_dir=FLAGS.data_dir,
                                        batch_size=FLAGS.batch_size)
  except tfcredit.errors.TfcreditError as error:
    print(f'error: {error}', file=sys.stderr)
    return error.exit_code
  print(json.dumps(result))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The ``tfcredit-evaluate`` console script."""
  define_flags()
  common.run(run, argv)


if __name__ == '__main__':
  main()
