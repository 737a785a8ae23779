"""tfcredit-profile's attribution of TensorFlow op names (names as the profiler
records them for the Keras layers and for the fused unroll)."""

import pytest

from tfcredit.cli import profile_ops


@pytest.mark.parametrize('name,category', [
    ('while/body/_26/while/head_1/Tensordot/MatMul:MatMul', 'head, forward'),
    ('while/body/_26/gradient_tape/while/head_1/Tensordot/MatMul/MatMul_1:MatMul',
     'head, backward'),
    ('while/body/_26/while/SparseSoftmaxCrossEntropyWithLogits/'
     'SparseSoftmaxCrossEntropyWithLogits:SparseSoftmaxCrossEntropyWithLogits',
     'softmax cross-entropy (forward and backward)'),
    # Keras layers: forward in the layer's loop, backward under gradient_tape.
    ('while/body/_18/while/lstm_0_1/while/body/_271/while/lstm_0_1/while/'
     'lstm_cell_1/MatMul_1:MatMul', 'recurrent layers, forward'),
    ('while/body/_18/gradient_tape/while/lstm_0_1/while/while/lstm_0_1/while_grad/'
     'body/_394/gradient_tape/while/lstm_0_1/while/gradients/AddN_4:AddN',
     'recurrent layers, backward'),
    # The fused unroll: forward under the layer's name, backward in lstm_backward.
    ('while/body/_18/while/lstm_0/while/body/_303/while/lstm_0/while/MatMul:MatMul',
     'recurrent layers, forward'),
    ('while/body/_18/while/lstm_backward/while/body/_383/while/lstm_backward/while/'
     'concat:ConcatV2', 'recurrent layers, backward'),
    ('while/body/_26/while/cond/then/_900/while/cond/sgd/AssignSubVariableOp_6:'
     'AssignSubVariableOp', 'optimizer update'),
    ('while/body/_26/while/clip_by_global_norm/mul_8:Mul',
     'gradient clipping (global norm)'),
    ('while/body/_26/while/embedding_1/GatherV2:GatherV2',
     'embedding (lookup and gradient)'),
    ('while/body/_26/while/Cast_3:Cast', 'other ops'),
])
def test_op_names_are_attributed_to_what_they_compute(name, category):
  assert profile_ops.categorize(name) == category


def test_only_op_events_are_summed():
  # Enclosing host events would count their ops' time twice.
  for enclosing in ('KernelAndDeviceFunc::Run', 'EagerLocalExecute: __inference_f_12',
                    'ExecutorState::Process', 'ThreadpoolListener::StartRegion'):
    assert not profile_ops._OP_NAME.match(enclosing)  # pylint: disable=protected-access
  assert profile_ops._OP_NAME.match('while/lstm_0/MatMul:MatMul')  # pylint: disable=protected-access


def test_xla_kernels_are_summed_as_their_own_category():
  # pylint: disable=protected-access
  for name in ('multiply_subtract_fusion.2', 'subtract_add_fusion',
               'ynn_fusion', 'wrapped_reduce-window'):
    assert profile_ops._XLA_KERNEL.match(name)
  for enclosing in ('ThunkExecutor::Execute', 'ParallelFor', 'BlockUntilReady',
                    'CpuExecutable::ExecuteAsyncOnStream'):
    assert not profile_ops._XLA_KERNEL.match(enclosing)


def test_one_method_is_profiled(run_command, tmp_path):
  done = run_command('profile_ops', f'--output_dir={tmp_path}', '--calls=1',
                     '--method=A: train.method = @FPTT',
                     '--method=B: train.method = @DNI')
  assert done.returncode == 2, done.stderr
  assert '--method is given 2 times' in done.stderr
  assert 'Traceback' not in done.stderr
