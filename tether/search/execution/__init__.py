"""Running a search: its studies, device slots, tickets, one process per trial."""
