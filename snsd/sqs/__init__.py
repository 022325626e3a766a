"""snsd on SQS: a listener that forwards its spooled records to a queue, and workers that take
their work from it (``--role listener`` / ``--role worker``; docs/scaling.md)."""
