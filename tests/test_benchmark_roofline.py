"""The benchmark's roofline: CPU probing, the best-of-rounds peak, the matmul rows.

No timing is asserted: the runners below have fixed rates.
"""

import platform

import pytest
import tensorflow as tf

from tfcredit.benchmarks import machine
from tfcredit.benchmarks import measure
from tfcredit.benchmarks import report
from tfcredit.benchmarks import runners
from tfcredit.benchmarks import workloads

from tiers import slow_except

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_fp16 \
amx_bf16 amx_tile amx_int8 arch_capabilities

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_fp16 \
amx_bf16 amx_tile amx_int8 arch_capabilities
"""

EPYC = """\
processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2 sha_ni vaes
"""


def test_cpu_features_with_amx():
  features = machine.cpu_features(SAPPHIRE_RAPIDS)
  assert features['cpu_model'] == 'Intel(R) Xeon(R) Platinum 8480+'
  assert features['isa_flags'] == ['avx2', 'fma', 'avx512f', 'avx512_bf16',
                                   'amx_bf16', 'amx_tile', 'amx_int8']
  assert features['bf16_flags'] == ['amx_bf16', 'amx_tile', 'avx512_bf16']
  assert features['bf16_matmul'] is True
  assert features['cpu_count'] >= 1


def test_cpu_features_without_amx():
  features = machine.cpu_features(EPYC)
  assert features['cpu_model'] == 'AMD EPYC 7B13'
  assert features['isa_flags'] == ['avx2', 'fma']
  assert features['bf16_flags'] == []
  assert features['bf16_matmul'] is False


def test_cpu_features_flag_names_match_whole_words():
  # avx512_bf16 alone is a bf16 matrix instruction set; amx_tile without amx_bf16
  # is not; avx512bw must not read as avx512f, nor avx2 inside another name.
  features = machine.cpu_features(
      'model name : X\nflags : avx512bw avx2x amx_tile amx_int8\n')
  assert features['isa_flags'] == ['amx_tile', 'amx_int8']
  assert features['bf16_flags'] == ['amx_tile']
  assert features['bf16_matmul'] is False
  assert machine.cpu_features('flags : avx512_bf16\n')['bf16_matmul'] is True


def test_cpu_features_without_cpuinfo_falls_back_to_platform(monkeypatch):
  monkeypatch.setattr(platform, 'processor', lambda: 'arm')
  features = machine.cpu_features('')
  assert features['cpu_model'] == 'arm'
  assert features['isa_flags'] == [] and features['bf16_matmul'] is False


def _runner(workload, unit, rates, cpu_rates, flops_per_unit):
  return measure.Runner(workload, workload, unit, run=None,
                        flops_per_unit=flops_per_unit, rates=list(rates),
                        cpu_rates=list(cpu_rates))


def test_fractions_are_against_the_best_roofline_round():
  roofline = _runner('matmul reference', 'GFLOP', [50.0, 80.0, 60.0],
                     [40.0, 45.0, 30.0], 1e9)
  model = _runner('lm', 'tokens', [1000.0, 2000.0, 1500.0], [500.0, 900.0, 700.0],
                  2e7)  # 20, 40, 30 GFLOP/s; 10, 18, 14 per CPU-second.
  assert report.roofline_peak(roofline) == (80.0, 45.0)
  rows = report.summarize([roofline, model], roofline, references={})
  assert rows[1]['gflops'] == pytest.approx(30.0)
  # Not the per-round median ratio (0.5 in wall clock, 0.4 in CPU time).
  assert rows[1]['fraction_of_roofline'] == pytest.approx(30.0 / 80.0)
  assert rows[1]['fraction_of_roofline_cpu_time'] == pytest.approx(14.0 / 45.0)
  assert rows[0]['fraction_of_roofline'] == pytest.approx(60.0 / 80.0)
  assert rows[0]['fraction_of_roofline_cpu_time'] == pytest.approx(40.0 / 45.0)


@pytest.mark.parametrize('dtype, label', [
    (tf.float32, 'matmul [8,8]x[8,16]'),
    (tf.bfloat16, 'matmul [8,8]x[8,16] bfloat16')])
def test_matmul_runner_counts_its_chained_products(dtype, label):
  flops = 2.0 * 8 * 8 * 16
  runner = runners.matmul_runner((8, 8, 16), 10.5 * flops, dtype=dtype)
  assert runner.config == label
  units, elapsed = runner.run()
  assert units == pytest.approx(10 * flops / 1e9)  # 10 products per timing.
  assert elapsed.wall > 0


# ------------------------------------------------ --method='NAME: bindings' rows
@pytest.fixture(scope='module')
def short_ptb():
  return workloads.ptb_small(steps=40, seed=0)


def test_a_method_row_is_built_from_its_gin_bindings(short_ptb):
  runner = runners.configured_runner(
      short_ptb, 'ARTBP L0=5: train.method = @ARTBP; ARTBP.mean_length = 5; '
      'ARTBP.windows_per_call = 2')
  assert runner.config == 'tfcredit ARTBP L0=5'
  units, _ = runner.run()  # One round: the whole stream, whatever the draws.
  assert units == short_ptb.batch_size * 40
  assert runner.traces() == 1


def test_a_method_row_applies_its_bindings_and_names_what_is_wrong(short_ptb):
  from tfcredit.errors import ConfigurationError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigurationError, match='ARTBP.mean_length'):
    runners.configured_runner(
        short_ptb, 'bad: train.method = @ARTBP; ARTBP.mean_length = -1')
  with pytest.raises(ConfigurationError, match='binds no method'):
    runners.configured_runner(short_ptb, 'no class: ARTBP.mean_length = 5')
  with pytest.raises(ConfigurationError, match='NAME: BINDINGS'):
    runners.configured_runner(short_ptb, 'train.method = @ARTBP')


# --------------------------------------------------- --forward_mode_units rows
@pytest.mark.parametrize(
    'name', slow_except(['RTRL', 'UORO', 'SnAp1', 'KFRTRL'], 'RTRL'))
def test_a_forward_mode_row_names_the_floats_its_influence_carries(name):
  from tfcredit import methods  # pylint: disable=g-import-not-at-top
  units, steps = 8, 20
  workload = workloads.forward_mode_stream(units, steps=steps, seed=0)
  runner = runners.forward_mode_runner(workload, getattr(methods, name), 10, 2)
  rows, state = workloads.FORWARD_MODE_BATCH, 2 * units  # An LSTM's h and c.
  vocabulary = workloads.FORWARD_MODE_VOCABULARY
  weights = (vocabulary * units + 4 * units * (2 * units + 1)
             + units * vocabulary + vocabulary)  # Embedding, LSTM, head.
  floats = rows * state * weights if name == 'RTRL' else rows * (state + weights)
  if name == 'SnAp1':  # The LSTM's weights write 2 units, the embedding's all.
    cell, embedding = 4 * units * (2 * units + 1), vocabulary * units
    floats = rows * (cell * 2 + embedding * state)
    assert (f'rows × weights × k = {rows} × ({cell} × 2 + {embedding} × '
            f'{state}) = ') in runner.config
  if name == 'KFRTRL':  # The embedding's factor (one-hot ⊗ ∂s/∂x), the LSTM's.
    floats = rows * ((vocabulary + state * units)
                     + (2 * units + 1 + state * 4 * units))
  assert runner.config.endswith(f' = {floats:,} floats')
  assert runner.run()[0] == rows * steps  # One round: the whole stream.
  assert runner.traces() == 1


@pytest.mark.slow  # Measures a sparse GRU row.
def test_a_sparse_gru_row_counts_snap2s_reach_within_two_steps():
  """SnAp-2 on the sparse GRU: each cell weight carries the most units one of
  its variable's weights reaches in two steps (1 plus the units its unit
  feeds), the embedding every unit; the floats are ``SnAp2.influence_size``'s,
  between SnAp-1's and RTRL's."""
  from tfcredit import methods  # pylint: disable=g-import-not-at-top
  units, steps = 8, 20
  workload = workloads.forward_mode_stream(units, steps=steps, seed=0,
                                           sparsity=0.75)
  assert workload.name == 'symbols (random ids), sparse GRU 8 (75% cut)'
  rows = workloads.FORWARD_MODE_BATCH
  floats = {}
  for name in ('RTRL', 'SnAp1', 'SnAp2'):
    runner = runners.forward_mode_runner(workload, getattr(methods, name), 10, 2)
    floats[name] = int(runner.config.rsplit(' = ', 1)[1].split()[0]
                       .replace(',', ''))
    if name == 'SnAp2':
      assert runner.run()[0] == rows * steps  # One round: the whole stream.
      assert runner.traces() == 1
  vocabulary = workloads.FORWARD_MODE_VOCABULARY
  cell = 3 * units * (2 * units + 2)  # Kernel, recurrent kernel, two biases.
  assert floats['RTRL'] == rows * units * (
      vocabulary * units + cell + units * vocabulary + vocabulary)
  assert floats['SnAp1'] < floats['SnAp2'] < floats['RTRL']


@pytest.mark.slow  # One more forward-mode row; RTRL's stays in the inner loop.
def test_an_elementwise_rtrl_row_names_the_floats_its_influence_carries():
  """The LRU row: each of the LRU's 2·inputs + 3 weights per unit carries its
  unit's 2 entries per row (the embedding, under approximate, none)."""
  from tfcredit import methods  # pylint: disable=g-import-not-at-top
  units, inputs, steps = 8, 6, 20
  workload = workloads.lru_stream(units, inputs, steps=steps, seed=0)
  runner = runners.forward_mode_runner(workload, methods.ElementwiseRTRL, 10, 2,
                                       approximate=True)
  rows = workloads.FORWARD_MODE_BATCH
  floats = rows * 2 * (2 * inputs + 3) * units
  assert 'approximate=True' in runner.config
  assert runner.config.endswith(f' = {floats:,} floats')
  assert runner.run()[0] == rows * steps  # One round: the whole stream.
