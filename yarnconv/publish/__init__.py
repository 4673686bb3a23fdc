"""Getting an extended model to people: launch hints per runtime (and, to come, the model card,
recipes and the Hub push)."""
