"""The dock's Qt views: one small widget per file; they show the model and forward clicks."""
