# A thin drop-in: `twistd --help` imports every plugin file, so the real work lives in snsd.tap.
from twisted.application.service import ServiceMaker

snsd = ServiceMaker("snsd", "snsd.tap", "SNS -> S3 event -> job daemon", "snsd")
