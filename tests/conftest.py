"""Test-session set-up: split the CPU into two logical devices.

This must happen before TensorFlow initialises its devices, so it runs when pytest
imports this file, before any test module. Tests of ``tf.distribute`` then run
``MirroredStrategy`` over ``/cpu:0`` and ``/cpu:1``, the same code path as two GPUs;
everything else keeps using the default device.
"""

from tfcredit.training import distribution

distribution.split_cpu(2)
