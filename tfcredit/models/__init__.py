"""What computes: the recurrent model and its cell utilities."""

from tfcredit.models.contract import check_model
from tfcredit.models.leaky_rnn import LeakyRNNCell
from tfcredit.models.linear_cell import InfluenceBalancingCell
from tfcredit.models.cells import ForgetGateBias
from tfcredit.models.lru import LRUBlockCell
from tfcredit.models.lru import LRUCell
from tfcredit.models.recurrent import RecurrentModel
from tfcredit.models.recurrent import scale_gradient
from tfcredit.models.sparse_gru import SparseGRUCell
from tfcredit.models.synthesizers import LayerwiseSynthesizer
from tfcredit.models.synthesizers import NeuronwiseSynthesizer
