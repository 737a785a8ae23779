"""How a training call's metrics combine over a summary interval.

Shared by the methods, which name a reduction for each metric they return
(``Method.metric_reductions``), and the trainer's reporting, which applies them;
this module imports nothing of tfcredit, so neither side imports the other.
"""

# Add the values, keep the largest, keep the latest, or concatenate rank-1 values
# (written as a histogram).
SUM, MAX, LAST, CONCAT = 'sum', 'max', 'last', 'concat'
REDUCTIONS = (SUM, MAX, LAST, CONCAT)
# Every method's ``train_segment`` returns these: the summed task losses, the
# tokens or sequences they cover, the summed pre-clipping gradient norms, and the
# parameter updates applied.
BASE_METRICS = ('loss_sum', 'count', 'grad_norm_sum', 'updates')
# Added to every ``train_segment``'s metrics by the method base: windows whose
# update was refused because their loss or gradients were not finite.
NON_FINITE_METRIC = 'non_finite_windows'


def per_update_summaries(totals, reductions):
  """The default TensorBoard values of a method's extra metrics over an interval.

  A ``SUM`` metric named ``<x>_sum`` is written as ``<x>``, its mean per parameter
  update (``<x>_sum / updates``); other ``SUM`` metrics as totals; ``MAX`` and
  ``LAST`` metrics as they are; ``CONCAT`` metrics as histograms (arrays).

  Args:
    totals: every metric of the interval, base ones included, combined.
    reductions: the method's ``metric_reductions`` (``SUM`` when not listed).
  """
  values = {}
  updates = float(totals.get('updates', 0.0))
  for key, value in totals.items():
    if key in BASE_METRICS:
      continue
    if reductions.get(key, SUM) == SUM and key.endswith('_sum'):
      if updates > 0:
        values[key[:-len('_sum')]] = float(value) / updates
    else:
      values[key] = value
  return values
