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
from tfcredit.methods import METHODS
from tfcredit.methods import Method
from tfcredit.methods.artbp import ARTBP
from tfcredit.methods.dni import DNI
from tfcredit.methods.elementwise_rtrl import ElementwiseRTRL
from tfcredit.methods.eprop import EProp
from tfcredit.methods.fptt import FPTT
from tfcredit.methods.kf_rtrl import KFRTRL
from tfcredit.methods.rflo import RFLO
from tfcredit.methods.rtrl import RTRL
from tfcredit.methods.snap import SnAp1
from tfcredit.methods.snap import SnAp2
from tfcredit.methods.target_prop import TargetProp
from tfcredit.methods.truncated_bptt import BPTT
from tfcredit.methods.truncated_bptt import TruncatedBPTT
from tfcredit.methods.uoro import UORO
from tfcredit.models import InfluenceBalancingCell
from tfcredit.models import LRUBlockCell
from tfcredit.models import LRUCell
from tfcredit.models import LeakyRNNCell
from tfcredit.models import LayerwiseSynthesizer
from tfcredit.models import NeuronwiseSynthesizer
from tfcredit.models import RecurrentModel
from tfcredit.models import SparseGRUCell
from tfcredit.tasks.base import Task
from tfcredit.tasks.images import SequentialImageTask
from tfcredit.tasks.influence_balancing import InfluenceBalancingTask
from tfcredit.tasks.lag_add import LagAddTask
from tfcredit.tasks.language_modeling import LanguageModelTask
from tfcredit.tasks.language_modeling import MarkovLanguageTask
from tfcredit.tasks.sequences import SequenceTask
from tfcredit.tasks.synthetic import AddingTask
from tfcredit.tasks.synthetic import CopyTask
from tfcredit.tasks.text_corpus import TextCorpusTask
from tfcredit.training import schedules
from tfcredit.training.trainer import train

__version__ = '0.1.0'

# Written out, so readers, IDEs and type checkers see the API; a test checks it
# against what the package defines and against the method registry (METHODS).
# Every tfcredit class registers with gin where it is defined
# (``config.configurable``); the Keras optimizers a config may name are
# registered here.
__all__ = [
    'ARTBP', 'AddingTask', 'BPTT', 'ConfigurationError', 'CopyTask', 'DNI',
    'DataError', 'EProp', 'ElementwiseRTRL', 'FPTT', 'InfluenceBalancingCell',
    'InfluenceBalancingTask', 'KFRTRL', 'LRUBlockCell', 'LRUCell', 'LagAddTask',
    'LanguageModelTask', 'LayerwiseSynthesizer', 'LeakyRNNCell',
    'MarkovLanguageTask', 'METHODS', 'Method', 'NeuronwiseSynthesizer', 'RFLO',
    'RTRL', 'RecurrentModel', 'SequenceTask', 'SequentialImageTask', 'SnAp1',
    'SnAp2', 'SparseGRUCell', 'TargetProp', 'Task', 'TextCorpusTask',
    'TrainingError', 'TruncatedBPTT', 'UORO', 'train',
]

for _optimizer in (keras.optimizers.SGD, keras.optimizers.Adam,
                   keras.optimizers.Adagrad, keras.optimizers.RMSprop,
                   keras.optimizers.AdamW):
  gin.external_configurable(_optimizer, module='keras.optimizers')
