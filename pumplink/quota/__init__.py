"""Quotas: the pure rules of a day's allowance, and today's use read from the database."""
