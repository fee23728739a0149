"""tokenyard.evals: run a testset against an OpenAI-compatible endpoint, score it, and gate on a baseline.

Heavy dependencies (ragas, sentence-transformers, torch) are imported only by the code that scores, so
``tokenyard eval gate`` and ``tokenyard --help`` stay light.
"""
