"""Schedules: recurrence rules, the due-time queue and the scheduler actor."""
