"""How credit is assigned: one module per method, one shared base."""

from tfcredit.methods.artbp import ARTBP
from tfcredit.methods.base import Method
from tfcredit.methods.fptt import FPTT
from tfcredit.methods.target_prop import TargetProp
from tfcredit.methods.dni import DNI
from tfcredit.methods.truncated_bptt import BPTT
from tfcredit.methods.truncated_bptt import TruncatedBPTT
