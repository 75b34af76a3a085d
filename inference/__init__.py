"""The App framework and the InferenceService runner."""
