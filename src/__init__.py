"""The spec's documented import paths (``src.utils.memory_init`` ...): thin aliases of montage."""
