"""Built-in policies: when to save, how to name, what to keep."""
