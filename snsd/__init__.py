"""snsd: a Twisted daemon that turns verified SNS deliveries of S3 events into jobs."""

__version__ = "0.1.0"
