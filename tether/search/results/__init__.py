"""What a search leaves: the final evaluation over seeds, the comparison table, the report."""
