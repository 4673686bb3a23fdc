"""``yarnconv eval``: does the extended model read long text? The YaRN paper's two measurements (sliding
window perplexity against context length, passkey retrieval) for the user's own checkpoint, beside its
base and the other scalings at the same factor."""
