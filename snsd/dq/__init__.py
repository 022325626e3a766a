"""The built-in data-quality job: stream an S3 object, check it against declared rules, return a verdict."""

from snsd.dq.job import DataQualityJob, JobError, make_job
from snsd.dq.rules import RuleBook, RulesError, RuleSet, load_rules, parse_rules

__all__ = ["DataQualityJob", "JobError", "RuleBook", "RuleSet", "RulesError", "load_rules", "make_job", "parse_rules"]
