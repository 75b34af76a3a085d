"""EncoderService: tensors into media files, uploads into storage."""
