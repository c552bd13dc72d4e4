"""The version of the ckpthooks distribution."""

__version__ = "0.1.0.dev0"

#: Version of the on-disk layout ckpthooks writes (``checkpoint["ckpthooks"]["format_version"]``).
FORMAT_VERSION = 1

#: Value written under ``pytorch-lightning_version``: the Lightning layout these files follow.
LIGHTNING_LAYOUT_VERSION = "2.6.0"
