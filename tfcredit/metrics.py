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
