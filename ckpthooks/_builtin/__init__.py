"""Built-in plugins: registered first, through the same hooks as third-party plugins.

These modules import nothing heavy at import time, so listing plugins stays fast.
"""
