"""The command-line entry points, installed as console scripts.

setup.cfg (``console_scripts``) is the one list of them: each module here with a
``main()`` is a command ``tfcredit-<name>`` (``common`` and modules named ``_*``
are their helpers), and ``python -m tfcredit.cli.<module>``
and ``python tools/<module>.py`` run it too. They start quietly:
``tfcredit._startup`` hides TensorFlow's C++ start-up lines unless
``TF_CPP_MIN_LOG_LEVEL`` is set or ``--verbose`` is given.
"""
