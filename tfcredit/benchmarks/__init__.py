"""Training-throughput benchmarks: workloads, timed runners, a FLOP model, reports.

The library behind ``tfcredit-benchmark`` (``tfcredit/cli/benchmark.py``, which
only parses its flags into ``suite.Options``, prints and writes the files); every
module here takes its settings as arguments, none reads flags.

* ``flops``: the FLOP model (LSTM steps, dense heads, training) and the roofline's
  matmul size.
* ``machine``: the CPU's model, ISA flags and count; the JSON's machine entry.
* ``workloads``: the networks and data layouts timed (PTB small on random token
  ids, the adding task, the forward-mode symbol streams).
* ``measure``: clocks, ``Runner`` (one timed configuration) and the interleaved
  rounds.
* ``runners``: a ``Runner`` for each kind of row (any method, truncated BPTT,
  ARTBP, RTRL/UORO/SnAp-1, a gin-configured method, Keras ``fit``, chained
  matmuls).
* ``report``: median rates and ratios, the roofline peak, the markdown table, the
  summary paragraph and the JSON record.
* ``suite``: which rows a run has (``Options``), building and warming them up, and
  measuring them.
* ``scaling``: ``--scaling``: every method's time per step, peak memory and own
  state as the sequence length (and the forward-mode width) grows, each point in
  a fresh process; ``scaling_report``: the log-log slopes beside theory, the
  table, the figure and the files.
"""
