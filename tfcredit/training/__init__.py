"""The loop: trainer, checkpoints, summaries, schedules."""

from tfcredit.training.schedules import Constant
from tfcredit.training.schedules import CosineRestarts
from tfcredit.training.schedules import InverseSqrtDecay
from tfcredit.training.schedules import LearningRateSchedule
from tfcredit.training.schedules import MultiStepDecay
from tfcredit.training.schedules import PlateauDecay
from tfcredit.training.schedules import RootTimeDecay
from tfcredit.training.schedules import StepDecay
from tfcredit.training.trainer import train
