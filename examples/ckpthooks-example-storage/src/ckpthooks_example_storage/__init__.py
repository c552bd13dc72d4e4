"""An example storage package for ckpthooks: checkpoints whose bytes live in a SQLite database.

Installing the package registers the ``sqlblob://`` scheme with fsspec (entry point group
``fsspec.specs``); ckpthooks then saves, lists, verifies, prunes and copies checkpoints there like
anywhere else, without knowing the scheme's name.
"""

from ckpthooks_example_storage.filesystem import DATABASE_VARIABLE, SQLBlobFileSystem

__all__ = ["DATABASE_VARIABLE", "SQLBlobFileSystem"]
__version__ = "0.1.0"
