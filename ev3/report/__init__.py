"""Reporting: metrics.json files → pandas tables (:mod:`.aggregate`) and matplotlib figures (:mod:`.figures`)."""
