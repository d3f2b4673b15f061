"""Deciding: the expectations a table declares (expectations.py), tested at seed level with their error rates
(stats.py, rule_rates.py). Entry point: verdicts.py, which turns a table's collected runs into verdicts."""
