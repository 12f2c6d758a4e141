"""Pure analysis: statistics, decision policy, graders and reports (no I/O)."""
