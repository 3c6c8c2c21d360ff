"""Steering: prompts at target intensities, refusal detection, steerability statistics, reports."""
