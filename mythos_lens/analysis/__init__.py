"""`mythos-lens analyze`: collection, tables, summary and report (see :mod:`.run`)."""
