"""The spec's documented import paths (``src.utils.memory_init`` ...), as thin aliases of ``montage``."""
