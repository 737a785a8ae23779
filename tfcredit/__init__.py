"""tfcredit: train Keras recurrent networks with alternative temporal credit assignment.

The public API, and the gin registrations that make it configurable: a gin file
names ``@TruncatedBPTT``, ``@AddingTask``, ``@RecurrentModel``, ``@StepDecay``,
``@keras.optimizers.SGD``... and binds their arguments.
"""

from tfcredit import _startup

# Before TensorFlow is imported: the command-line entry points start quietly.
_startup.prepare()

import gin  # pylint: disable=g-import-not-at-top,wrong-import-position
import keras

from tfcredit import config
from tfcredit import errors
from tfcredit.errors import ConfigurationError
from tfcredit.errors import DataError
from tfcredit.errors import TrainingError
from tfcredit.methods import ARTBP
from tfcredit.methods import BPTT
from tfcredit.methods import FPTT
from tfcredit.methods import DNI
from tfcredit.methods import Method
from tfcredit.methods import TargetProp
from tfcredit.methods import TruncatedBPTT
from tfcredit.models import InfluenceBalancingCell
from tfcredit.models import LayerwiseSynthesizer
from tfcredit.models import NeuronwiseSynthesizer
from tfcredit.models import RecurrentModel
from tfcredit.tasks.base import Task
from tfcredit.tasks.images import SequentialImageTask
from tfcredit.tasks.influence_balancing import InfluenceBalancingTask
from tfcredit.tasks.language_modeling import LanguageModelTask
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.tasks.synthetic import CopyTask
from tfcredit.training import schedules
from tfcredit.training.trainer import train

__version__ = '0.1.0'

__all__ = [
    'ARTBP', 'AddingTask', 'BPTT', 'ConfigurationError', 'CopyTask', 'DataError',
    'InfluenceBalancingCell', 'InfluenceBalancingTask',
    'LanguageModelTask', 'MarkovLanguageTask', 'Method', 'RecurrentModel', 'Task', 'TrainingError',
    'TruncatedBPTT', 'train',
    'TargetProp',
    'FPTT', 'SequentialImageTask',
    'DNI', 'LayerwiseSynthesizer', 'NeuronwiseSynthesizer',
]

for _configurable in (RecurrentModel, TruncatedBPTT, BPTT, AddingTask, CopyTask,
                      LanguageModelTask, MarkovLanguageTask, schedules.Constant, schedules.StepDecay,
                      schedules.MultiStepDecay, schedules.PlateauDecay,
                      schedules.CosineRestarts,
                      ARTBP, InfluenceBalancingTask, InfluenceBalancingCell,
                      schedules.InverseSqrtDecay,
                      DNI, LayerwiseSynthesizer, NeuronwiseSynthesizer,
                      schedules.AlternatingRestarts):
  gin.external_configurable(_configurable, module='tfcredit')
gin.external_configurable(FPTT, module='tfcredit')
gin.external_configurable(SequentialImageTask, module='tfcredit')
gin.external_configurable(TargetProp, module='tfcredit')

for _optimizer in (keras.optimizers.SGD, keras.optimizers.Adam,
                   keras.optimizers.Adagrad, keras.optimizers.RMSprop,
                   keras.optimizers.AdamW):
  gin.external_configurable(_optimizer, module='keras.optimizers')
