"""Model sources (packaged, hub or local, tiny-random) and their conversion cache, language-model
scoring helpers, and batched generation."""
