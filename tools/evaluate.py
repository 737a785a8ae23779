"""Evaluates an export: ``python tools/evaluate.py --saved_model=saved_models/run/1``.

Loads only the SavedModel (no tfcredit model code), rebuilds the task's data from
the export's ``task.json`` asset, and reports the task metric on a split. The last
line printed is one JSON object. Exit codes: 0 success, 2 bad usage, 1 data failure.
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_string('saved_model', None, 'Path of an export (saved_models/<run>/<n>).')
flags.DEFINE_enum('split', 'test', ['train', 'valid', 'test'], 'Split to evaluate.')
flags.DEFINE_string('data_dir', None, 'Data directory; default $TFCREDIT_DATA_DIR or '
                    '~/.cache/tfcredit.')
flags.DEFINE_integer('batch_size', None, 'Evaluation batch size; default: the one '
                     'used in training (so the metric matches the trainer\'s).')
FLAGS = flags.FLAGS


def main(argv):
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  del argv
  import tfcredit  # pylint: disable=g-import-not-at-top
  from tfcredit import evaluation

  try:
    if not FLAGS.saved_model:
      raise tfcredit.ConfigurationError(
          '--saved_model is required: the path of an export, e.g. '
          'saved_models/quickstart/1')
    result = evaluation.evaluate_export(FLAGS.saved_model, FLAGS.split,
                                        data_dir=FLAGS.data_dir,
                                        batch_size=FLAGS.batch_size)
  except tfcredit.errors.TfcreditError as error:
    print(f'error: {error}', file=sys.stderr)
    return error.exit_code
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  flags.mark_flag_as_required('saved_model')
  app.run(lambda argv: sys.exit(main(argv)))
