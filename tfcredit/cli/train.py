"""Trains a model: ``tfcredit-train --gin_file=gin_configs/quickstart.gin``.

Flags are run plumbing only; everything about the experiment is gin. A
``--gin_file`` is a path on disk or a config shipped in the package
(``gin_configs/quickstart.gin``, ``testing/tiny.gin``; see ``tfcredit.config``).
Writes ``config.gin`` and ``operative_config.gin``, TensorBoard events and
checkpoints into ``--model_dir`` (running again with the same directory resumes),
exports a SavedModel under ``--export_dir``, and prints one JSON object with the
final metrics as its last line. A rerun with a configuration the stored run cannot
resume is refused (``--overwrite`` starts over). SIGTERM or SIGINT (Ctrl-C)
finishes the current training call, writes a checkpoint and says how to resume.
Exit codes: 0 success, 2 bad configuration, 1 data or training failure, 143 after
SIGTERM, 130 after SIGINT.
"""

import json
import os
import sys
from typing import List, Optional, Sequence

from absl import flags

from tfcredit.cli import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  define = common.define_flag
  common.define_gin_flags()
  define(flags.DEFINE_string, 'model_dir', None, 'Run directory; default '
         'runs/<config name>.')
  define(flags.DEFINE_string, 'data_dir', None, 'Data directory; default '
         '$TFCREDIT_DATA_DIR or ~/.cache/tfcredit.')
  define(flags.DEFINE_string, 'export_dir', 'saved_models', 'Where SavedModels '
         'are exported; empty: no export.')
  define(flags.DEFINE_string, 'strategy', 'default', 'default | mirrored (all '
         'local GPUs, or the logical CPUs) | multi_worker (reads TF_CONFIG).')
  define(flags.DEFINE_bool, 'overwrite', False, 'Delete the run in --model_dir '
         '(configs, checkpoints, summaries, final metrics) and start over; '
         'without it a rerun resumes, and refuses a configuration the stored run '
         'cannot resume.')
  define(flags.DEFINE_integer, 'logical_cpus', None, 'Split the CPU into this '
         'many logical devices first (to try --strategy=mirrored without GPUs).')


def _warn_if_mirrored_without_gpus() -> None:
  """Says once, in our words, what TensorFlow's cuInit error line would mean."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if FLAGS.strategy != 'mirrored' or tf.config.list_physical_devices('GPU'):
    return
  count = FLAGS.logical_cpus or 1
  print(f'warning: --strategy=mirrored found no GPU; it mirrors over {count} '
        f'logical CPU device{"s" if count > 1 else ""} instead'
        + ('' if FLAGS.logical_cpus else ' (--logical_cpus=N splits the CPU)'),
        file=sys.stderr)


def run(argv: List[str]) -> int:
  """Trains with the parsed flags; returns the exit code."""
  code = common.unexpected_arguments(argv, '; use --gin_file and --gin_bindings')
  if code is not None:
    return code
  import tfcredit  # pylint: disable=g-import-not-at-top
  from tfcredit import config  # pylint: disable=g-import-not-at-top
  from tfcredit.training import distribution  # pylint: disable=g-import-not-at-top
  from tfcredit.training import run_directory  # pylint: disable=g-import-not-at-top

  try:
    if not FLAGS.gin_file:
      raise tfcredit.ConfigurationError(
          '--gin_file is required: e.g. --gin_file=gin_configs/quickstart.gin')
    if FLAGS.logical_cpus is not None and FLAGS.logical_cpus < 1:
      raise tfcredit.ConfigurationError(
          f'--logical_cpus={FLAGS.logical_cpus} must be at least 1 (or left out)')
    if FLAGS.logical_cpus:
      distribution.split_cpu(FLAGS.logical_cpus)
    _warn_if_mirrored_without_gpus()
    strategy = distribution.make_strategy(FLAGS.strategy)
    config_text = config.parse(FLAGS.gin_file, FLAGS.gin_bindings)
    model_dir = FLAGS.model_dir or os.path.join(
        'runs', os.path.splitext(os.path.basename(FLAGS.gin_file[-1]))[0])
    # Before anything is written there: is model_dir this configuration's?
    run_directory.prepare(model_dir, config_text, overwrite=FLAGS.overwrite,
                          write=distribution.is_chief(strategy))
    result = tfcredit.train(model_dir, data_dir=FLAGS.data_dir,
                            export_dir=FLAGS.export_dir or None,
                            strategy=strategy)
  except (Exception, KeyboardInterrupt) as error:  # pylint: disable=broad-except
    return common.failure(error)
  print(json.dumps(result))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The ``tfcredit-train`` console script."""
  define_flags()
  common.run(run, argv)


if __name__ == '__main__':
  main()
