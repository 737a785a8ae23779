"""The FLOP model of the benchmark, and the size of its roofline matmul.

Multiply-adds count 2: an LSTM layer costs ``8·units·(inputs + units)`` per step and
sequence, a dense head ``2·inputs·outputs``; a backpropagated step costs twice its
forward step (gradients for activations and for weights). So a language-model token
costs 3x its forward pass, and an adding sequence trained with window ``K`` costs
``T`` forward steps plus ``2·min(K, T)`` backward ones (only the window holding the
terminal loss is backpropagated). Embedding lookups, gate nonlinearities and the
softmax are ignored, so the achieved rates are lower bounds.

The roofline is the machine's peak: ``ROOFLINE_PRODUCTS`` chained ``SQUARE_MATMUL``
products per timing (``QUICK_ROOFLINE_PRODUCTS`` in a quick run).
"""

import math

SQUARE_MATMUL = (1024, 1024, 1024)  # The roofline: large enough to saturate the BLAS.
ROOFLINE_PRODUCTS = 40  # Chained SQUARE_MATMUL products per timing (~86 GFLOP).
QUICK_ROOFLINE_PRODUCTS = 10  # The same in a quick run.


def lstm_step_flops(input_dim: int, units: int) -> float:
  """Forward FLOPs of one LSTM step for one sequence: four gates' two matmuls."""
  return 2.0 * 4 * units * (input_dim + units)


def gru_step_flops(input_dim: int, units: int) -> float:
  """Forward FLOPs of one (dense) GRU step for one sequence: three gates' two
  matmuls."""
  return 2.0 * 3 * units * (input_dim + units)


def lru_step_flops(input_dim: int, units: int, output_dim: int) -> float:
  """Forward FLOPs of one LRU step (``tfcredit.models.lru``) for one sequence:
  the complex ``B x`` and ``Re(C h)`` (two real products each), the
  element-wise ``D ⊙ x`` ignored."""
  return 2.0 * 2 * units * (input_dim + output_dim)


def dense_flops(input_dim: int, output_dim: int) -> float:
  """Forward FLOPs of a dense layer applied to one vector."""
  return 2.0 * input_dim * output_dim


def training_flops(core_step: float, head: float, forward_steps: float,
                   backward_steps: float, head_evaluations: float) -> float:
  """FLOPs of a forward pass plus a backward pass costing twice the forward.

  Args:
    core_step: forward FLOPs of one step of the recurrent core.
    head: forward FLOPs of one evaluation of the head.
    forward_steps: core steps run forward.
    backward_steps: core steps backpropagated.
    head_evaluations: head evaluations (each also backpropagated).

  Returns:
    The total FLOPs.
  """
  return (core_step * (forward_steps + 2 * backward_steps)
          + 3 * head * head_evaluations)


def roofline_products(quick: bool) -> int:
  """Chained ``SQUARE_MATMUL`` products per roofline timing."""
  return QUICK_ROOFLINE_PRODUCTS if quick else ROOFLINE_PRODUCTS


def roofline_flops(quick: bool) -> float:
  """FLOPs of one roofline timing: ``roofline_products`` square products."""
  return roofline_products(quick) * 2.0 * math.prod(SQUARE_MATMUL)
