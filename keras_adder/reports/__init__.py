"""What a model is worth: exhaustive evaluation and the plots."""
