"""Trains a model: ``python tools/train.py --gin_file=gin_configs/quickstart.gin``.

Flags are run plumbing only; everything about the experiment is gin. Writes
``config.gin`` and ``operative_config.gin``, TensorBoard events and checkpoints into
``--model_dir`` (running again with the same directory resumes), exports a
SavedModel under ``--export_dir``, and prints one JSON object with the final
metrics as its last line. Exit codes: 0 success, 2 bad configuration, 1 data or
training failure.
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_multi_string('gin_file', [], 'Gin config files (repeatable).')
flags.DEFINE_multi_string('gin_bindings', [], 'Gin bindings (repeatable), e.g. '
                          '"TruncatedBPTT.window = 20".')
flags.DEFINE_string('model_dir', None, 'Run directory; default runs/<config name>.')
flags.DEFINE_string('data_dir', None, 'Data directory; default $TFCREDIT_DATA_DIR or '
                    '~/.cache/tfcredit.')
flags.DEFINE_string('export_dir', 'saved_models', 'Where SavedModels are exported; '
                    'empty: no export.')
flags.DEFINE_string('strategy', 'default', 'default | mirrored (all local GPUs, or '
                    'the logical CPUs) | multi_worker (reads TF_CONFIG).')
flags.DEFINE_integer('logical_cpus', None, 'Split the CPU into this many logical '
                     'devices first (to try --strategy=mirrored without GPUs).')
FLAGS = flags.FLAGS


def main(argv):
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}; use --gin_file and '
          '--gin_bindings', file=sys.stderr)
    return 2
  import tfcredit  # pylint: disable=g-import-not-at-top
  from tfcredit import config
  from tfcredit.training import distribution

  try:
    if not FLAGS.gin_file:
      raise tfcredit.ConfigurationError(
          '--gin_file is required: e.g. --gin_file=gin_configs/quickstart.gin')
    if FLAGS.logical_cpus:
      distribution.split_cpu(FLAGS.logical_cpus)
    strategy = distribution.make_strategy(FLAGS.strategy)
    config_text = config.parse(FLAGS.gin_file, FLAGS.gin_bindings)
    model_dir = FLAGS.model_dir or os.path.join(
        'runs', os.path.splitext(os.path.basename(FLAGS.gin_file[-1]))[0])
    if distribution.is_chief(strategy):
      os.makedirs(model_dir, exist_ok=True)
      with open(os.path.join(model_dir, 'config.gin'), 'w') as f:
        f.write(config_text)
    result = tfcredit.train(model_dir, data_dir=FLAGS.data_dir,
                            export_dir=FLAGS.export_dir or None,
                            strategy=strategy)
  except tfcredit.errors.TfcreditError as error:
    print(f'error: {error}', file=sys.stderr)
    return error.exit_code
  except KeyboardInterrupt:
    print('interrupted: run the same command again to resume from the last '
          'checkpoint', file=sys.stderr)
    return 1
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
