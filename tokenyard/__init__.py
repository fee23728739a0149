"""tokenyard: Kubernetes-native LLM serving.

The parts live in subpackages (``tokenyard.runtime``, ...); this package holds only the CLI, so
importing it stays cheap.
"""

__version__ = "0.1.0"
