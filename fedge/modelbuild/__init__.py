"""``fedge-model build``: trainable builtins-only ``.tflite`` files from a declarative spec.

A workstation tool (it needs TensorFlow: the ``build`` extra); devices never import it.
``spec`` is pure, ``graph`` and ``convert`` need TensorFlow, ``cli`` owns the output.
"""
