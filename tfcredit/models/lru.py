"""The linear recurrent unit (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu & De
2023, "Resurrecting Recurrent Neural Networks for Long Sequences", ICML).

A complex diagonal linear recurrence read out by a real projection:

    h_t = λ ⊙ h_{t−1} + γ ⊙ (B x_t),      y_t = Re(C h_t) + D ⊙ x_t,

with ``λ = exp(−exp(ν) + i·exp(θ))`` (the stable exponential parameterisation of
Section 3.3: ``|λ| = exp(−exp(ν)) < 1`` for every ``ν``) and the normaliser ``γ =
exp(γ_log)``, initialised to ``sqrt(1 − |λ|²)`` so a white input keeps the
state's scale whatever ``|λ|``. ``|λ|`` starts uniform on the ring ``[r_min,
r_max]`` of the complex plane (``|λ|²`` uniform between the squares, as the
paper's ``nu_init``), the phase uniform in ``[0, max_phase]``. ``B`` and ``C``
are complex, ``B`` of entries ``N(0, 1/(2·inputs))`` in each part, ``C`` of
``N(0, 1/units)``; ``D`` is element-wise, ``N(0, 1)``, when the output is as wide
as the input (the paper's layers map ``H → H``), else a matrix ``[inputs,
outputs]`` of ``N(0, 1/inputs)``. The paper's appendix code is followed for
every initialiser (``init_lru_parameters``; its defaults ``r_min = 0``, ``r_max
= 1``, ``max_phase = 6.28``, here 2π).

The complex state is two real state tensors, its real and imaginary parts
(``state_size = (units, units)``), so every method sees an ordinary state nest;
the arithmetic is real: ``Re(λh) = λ_re h_re − λ_im h_im``, ``Im(λh) = λ_re h_im
+ λ_im h_re``, ``Re(Ch) = C_re h_re − C_im h_im``. The recurrence is diagonal per
unit (unit ``i`` is the pair ``(h_re[i], h_im[i])``), which
``tfcredit.methods.elementwise_rtrl`` uses for exact RTRL at the cost of the
forward pass. docs/methods/elementwise_rtrl.md.
"""

import math
from typing import Any, Dict, Optional

import keras
import tensorflow as tf

from tfcredit import config
from tfcredit import validation
from tfcredit.errors import ConfigurationError

# Keeps the logarithms of the ring initialisation finite: |λ|² = 0 (r_min = 0)
# would give ν = +∞, a phase of 0 θ_log = −∞.
_TINY = 1e-30
# LayerNorm's variance floor (Flax's default, the block's reference code).
_NORM_EPSILON = 1e-6


def ring_initial_values(units: int, r_min: float, r_max: float,
                        max_phase: float):
  """``(nu_log, theta_log, gamma_log)``, each ``[units]`` float32, of the ring
  initialisation (drawn from Keras's global generator, so
  ``keras.utils.set_random_seed`` reproduces them); computed in float64."""
  draw = lambda: tf.cast(keras.random.uniform([units]), tf.float64)
  squared = draw() * (r_max**2 - r_min**2) + r_min**2
  squared = tf.clip_by_value(squared, _TINY, 1.0)
  nu = -0.5 * tf.math.log(squared)  # |λ| = exp(−ν).
  # |λ|² = 1 only if r_max = 1 and the draw is 1: keep ν > 0 there.
  nu = tf.maximum(nu, _TINY)
  phase = tf.maximum(max_phase * draw(), _TINY)
  # 1 − |λ|² = −expm1(−2ν), exact where |λ| is close to 1.
  gamma_log = 0.5 * tf.math.log(-tf.math.expm1(-2.0 * nu))
  return tuple(tf.cast(x, tf.float32) for x in (tf.math.log(nu),
                                                  tf.math.log(phase), gamma_log))


@config.configurable
@keras.saving.register_keras_serializable(package='tfcredit')
class LRUCell(keras.layers.Layer):
  """A Keras RNN cell of the LRU (module docstring): state ``(h_re, h_im)``,
  each ``[B, units]``; output ``y_t`` ``[B, output_units]``.

  Weights: ``nu_log``, ``theta_log``, ``gamma_log`` ``[units]``; ``B_re``,
  ``B_im`` ``[inputs, units]``; ``C_re``, ``C_im`` ``[units, output_units]``;
  ``D`` ``[inputs]`` (same widths) or ``[inputs, output_units]``.
  """

  def __init__(self, units: int = 64, output_units: Optional[int] = None,
               r_min: float = 0.0, r_max: float = 1.0,
               max_phase: float = 2 * math.pi, **kwargs):
    """Args:
      units: complex state units ``N`` (the state is ``2N`` real numbers).
      output_units: width of ``y_t`` (default ``units``). ``D`` is element-wise
        when it equals the input's width, as in the paper, else a matrix.
      r_min, r_max: the ring ``|λ|`` starts on, ``0 ≤ r_min ≤ r_max ≤ 1``
        (the paper's code: 0 and 1; its long-range tasks 0.9 to 0.999).
      max_phase: the phase of ``λ`` starts uniform in ``[0, max_phase]``,
        positive (the paper: 2π; π/10 for its hardest task).
      **kwargs: Keras layer arguments.

    Raises:
      ConfigurationError: an argument is out of range, naming it.
    """
    super().__init__(**kwargs)
    self.units = validation.positive_int('LRUCell.units', units)
    self.output_units = (self.units if output_units is None else
                         validation.positive_int('LRUCell.output_units',
                                                 output_units))
    self.r_min = validation.finite_number('LRUCell.r_min', r_min, 0.0, 1.0,
                                          low_inclusive=True)
    self.r_max = validation.finite_number('LRUCell.r_max', r_max, 0.0, 1.0)
    if self.r_min > self.r_max:
      raise ConfigurationError(
          f'LRUCell.r_min = {r_min!r} is above LRUCell.r_max = {r_max!r}: the '
          'ring of initial |λ| is [r_min, r_max]')
    self.max_phase = validation.finite_number('LRUCell.max_phase', max_phase,
                                              0.0)
    self.state_size = (self.units, self.units)
    self.output_size = self.output_units

  def build(self, input_shape):
    inputs = int(input_shape[-1])
    units, outputs = self.units, self.output_units
    nu_log, theta_log, gamma_log = ring_initial_values(
        units, self.r_min, self.r_max, self.max_phase)
    constant = lambda value: (lambda shape, dtype=None: value)
    self.nu_log = self.add_weight(shape=(units,), initializer=constant(nu_log),
                                  name='nu_log')
    self.theta_log = self.add_weight(shape=(units,),
                                     initializer=constant(theta_log),
                                     name='theta_log')
    self.gamma_log = self.add_weight(shape=(units,),
                                     initializer=constant(gamma_log),
                                     name='gamma_log')
    normal = lambda std: keras.initializers.RandomNormal(stddev=std)
    self.B_re = self.add_weight(shape=(inputs, units),
                                initializer=normal(1 / math.sqrt(2 * inputs)),
                                name='B_re')
    self.B_im = self.add_weight(shape=(inputs, units),
                                initializer=normal(1 / math.sqrt(2 * inputs)),
                                name='B_im')
    self.C_re = self.add_weight(shape=(units, outputs),
                                initializer=normal(1 / math.sqrt(units)),
                                name='C_re')
    self.C_im = self.add_weight(shape=(units, outputs),
                                initializer=normal(1 / math.sqrt(units)),
                                name='C_im')
    self.elementwise_d = inputs == outputs
    self.D = self.add_weight(
        shape=(inputs,) if self.elementwise_d else (inputs, outputs),
        initializer=normal(1.0 if self.elementwise_d else 1 / math.sqrt(inputs)),
        name='D')
    super().build(input_shape)

  def recurrence(self):
    """``(λ_re, λ_im, γ)``, each ``[units]``."""
    modulus = tf.exp(-tf.exp(self.nu_log))
    phase = tf.exp(self.theta_log)
    return modulus * tf.cos(phase), modulus * tf.sin(phase), tf.exp(self.gamma_log)

  def call(self, inputs, states, training=False):
    del training
    h_re, h_im = states
    lambda_re, lambda_im, gamma = self.recurrence()
    new_re = (lambda_re * h_re - lambda_im * h_im
              + gamma * tf.matmul(inputs, self.B_re))
    new_im = (lambda_re * h_im + lambda_im * h_re
              + gamma * tf.matmul(inputs, self.B_im))
    output = tf.matmul(new_re, self.C_re) - tf.matmul(new_im, self.C_im)
    if self.elementwise_d:
      output += self.D * inputs
    else:
      output += tf.matmul(inputs, self.D)
    return output, [new_re, new_im]

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update({'units': self.units, 'output_units': self.output_units,
                   'r_min': self.r_min, 'r_max': self.r_max,
                   'max_phase': self.max_phase})
    return config


@config.configurable
@keras.saving.register_keras_serializable(package='tfcredit')
class LRUBlockCell(LRUCell):
  """The LRU inside the residual block that deep LRU networks stack (the deep
  LRU of Orvieto et al. 2023; the block of Zucchet et al. 2023's code):

      u = LayerNorm(x),  (y, h) = LRU(u, h),
      out = x + GLU(GELU(y)),  GLU(z) = (z W_a + b_a) ⊙ σ(z W_g + b_g),

  with the LRU's readout as wide as its input (``width``), so the block maps
  ``width → width`` and layers stack with the residual. The state and the
  recurrence are the LRU's (diagonal per unit: element-wise RTRL trains it, the
  normalisation and the GLU by its ``approximate`` rule, docs/methods/
  elementwise_rtrl.md). No dropout inside the block (``RecurrentModel.dropout``
  applies between layers).

  Weights: the LRU's (``LRUCell``; ``D`` element-wise), ``norm_scale``,
  ``norm_bias`` ``[width]``; ``glu_kernel``, ``gate_kernel`` ``[width, width]``,
  ``glu_bias``, ``gate_bias`` ``[width]``.
  """

  def __init__(self, units: int = 64, width: Optional[int] = None,
               r_min: float = 0.0, r_max: float = 1.0,
               max_phase: float = 2 * math.pi, **kwargs):
    """Args:
      units: complex state units ``N``.
      width: the block's input and output width ``H`` (default ``units``); the
        first block's input must be as wide (``RecurrentModel.embedding_dim``).
      r_min, r_max, max_phase: the LRU's initialisation (``LRUCell``).
      **kwargs: Keras layer arguments.

    Raises:
      ConfigurationError: an argument is out of range, naming it.
    """
    width = (units if width is None else
             validation.positive_int('LRUBlockCell.width', width))
    super().__init__(units=units, output_units=width, r_min=r_min, r_max=r_max,
                     max_phase=max_phase, **kwargs)
    self.width = width

  def build(self, input_shape):
    inputs = int(input_shape[-1])
    if inputs != self.width:
      raise ConfigurationError(
          f'LRUBlockCell.width = {self.width} must equal the block\'s input '
          f'width, {inputs} (the residual adds them): set '
          f'RecurrentModel.embedding_dim = {self.width} (an encoder) or '
          f'LRUBlockCell.width = {inputs}')
    super().build(input_shape)
    width = self.width
    self.norm_scale = self.add_weight(shape=(width,), initializer='ones',
                                      name='norm_scale')
    self.norm_bias = self.add_weight(shape=(width,), initializer='zeros',
                                     name='norm_bias')
    for name in ('glu', 'gate'):
      setattr(self, f'{name}_kernel', self.add_weight(
          shape=(width, width), initializer='glorot_uniform',
          name=f'{name}_kernel'))
      setattr(self, f'{name}_bias', self.add_weight(
          shape=(width,), initializer='zeros', name=f'{name}_bias'))

  def call(self, inputs, states, training=False):
    mean, variance = tf.nn.moments(inputs, axes=[-1], keepdims=True)
    normed = ((inputs - mean) * tf.math.rsqrt(variance + _NORM_EPSILON)
              * self.norm_scale + self.norm_bias)
    lru, states = super().call(normed, states, training=training)
    z = tf.nn.gelu(lru, approximate=True)
    glu = ((tf.matmul(z, self.glu_kernel) + self.glu_bias)
           * tf.sigmoid(tf.matmul(z, self.gate_kernel) + self.gate_bias))
    return inputs + glu, states

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.pop('output_units')
    config['width'] = self.width
    return config
