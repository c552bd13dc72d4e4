__version__ = "0.1.0"

#: Version of the on-disk layout (the structure encoding in the safetensors metadata).
FORMAT_VERSION = 1
