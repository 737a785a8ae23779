"""The command-line entry points, installed as console scripts (setup.cfg).

``tfcredit-train`` (``train``), ``tfcredit-evaluate`` (``evaluate``),
``tfcredit-compare`` (``compare``), ``tfcredit-fidelity`` (``gradient_fidelity``)
and ``tfcredit-benchmark`` (``benchmark``); each module's ``main()`` is the console
script and ``python -m tfcredit.cli.<module>`` runs it too. They start quietly:
``tfcredit._startup`` hides TensorFlow's C++ start-up lines unless
``TF_CPP_MIN_LOG_LEVEL`` is set or ``--verbose`` is given.
"""
