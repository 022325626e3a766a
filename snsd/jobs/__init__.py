"""Jobs: callables taking one S3ObjectRecord and returning a JSON-serialisable dict."""
