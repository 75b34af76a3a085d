"""Where encoded files and uploads are stored: the local CDN dir and S3-compatible buckets."""
