"""Speculative decoding: proposers (n-gram prompt lookup, a draft model) guess the next tokens, and the
target model verifies all of them in one forward pass (greedy match or rejection sampling)."""
