"""The commands of the ``ckpthooks`` command line, one module each; :mod:`ckpthooks.cli` assembles them.

No module here imports torch at import time: commands that need it import it inside their function,
so that ``ckpthooks plugins`` and ``ckpthooks --help`` stay fast.
"""
