__version__ = "0.1.0"

#: Version of the folder layout (how the checkpoint dict is split into DCP entries and a structure).
FORMAT_VERSION = 1
