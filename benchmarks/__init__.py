"""Side-by-side benchmarks: this client vs bare aiohttp vs the openai SDK (see README.md here)."""
